import { UsageError } from './errors.js';

const unitMs = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/**
 * A duration as people write it on a command line: `26h`, `90m`, `1d12h`,
 * `45s`; a bare number is seconds (the monitoring-plugin habit). Returns ms.
 */
export function parseDuration(text: string): number {
  const s = text.trim();
  if (!/^(\d+[smhdw])+$/.test(s) && !/^\d+$/.test(s)) throw new UsageError(`${JSON.stringify(text)} is not a duration (e.g. 26h, 90m, 1d12h, 3600)`);
  let ms = /^\d+$/.test(s) ? Number(s) * 1000 : 0;
  for (const m of s.matchAll(/(\d+)([smhdw])/g)) ms += Number(m[1]) * unitMs[m[2] as keyof typeof unitMs];
  if (ms <= 0) throw new UsageError(`${JSON.stringify(text)} is not a positive duration`);
  return ms;
}

/** The short form back, for messages, in hours at most (as --max-age is usually written): 93600000 → "26h", 5400000 → "1h30m". */
export function formatDuration(ms: number): string {
  let rest = Math.round(ms / 1000);
  if (rest === 0) return '0s';
  let out = '';
  for (const [u, size] of [['h', 3_600], ['m', 60], ['s', 1]] as const) {
    const n = Math.floor(rest / size);
    if (n > 0) out += `${n}${u}`;
    rest -= n * size;
  }
  return out;
}
