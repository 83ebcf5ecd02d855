import type { LeafEntry } from '../directory/types.js';
import { describeReturnCode } from '../domain/returnCodes.js';
import type { StepProgress } from '../node/StepContext.js';
import type { Io } from './runtime.js';

/** Human lines for a leaf's mode changes and a step's progress (stderr). */
export function leafChangeLine(l: LeafEntry): string {
  const rv = l.returnValue ? `  return value ${l.returnValue} (${describeReturnCode(l.returnValue)})` : '';
  return `${l.vm.padEnd(24)} ${l.leaf}  ${l.mode}${rv}`;
}

export function progressPrinter(io: Io): (p: StepProgress) => void {
  let last = '';
  return (p) => {
    const pct = p.total ? ` ${Math.floor(((p.done ?? 0) / p.total) * 100)}%` : '';
    const line = `${p.vm.padEnd(24)} ${p.leaf}  ${p.step}: ${p.message}${pct}`;
    if (line !== last) io.err(line);
    last = line;
  };
}

export function summarize(leaves: LeafEntry[]): { ok: LeafEntry[]; failed: LeafEntry[] } {
  const ok = leaves.filter((l) => l.mode === 'finished' && (l.returnValue ?? 0) === 0);
  return { ok, failed: leaves.filter((l) => !ok.includes(l)) };
}

export function resultLines(leaves: LeafEntry[]): string[] {
  return leaves.map((l) =>
    l.mode === 'finished' && !l.returnValue
      ? `${l.vm}: backed up (${l.leaf}; snapshot ${l.executionTime['snapshot'] ?? '?'} s, downtime ${l.executionTime['downtime'] ?? '?'} s, merge ${l.executionTime['merge'] ?? '?'} s, retain ${l.executionTime['retain'] ?? '?'} s)`
      : `${l.vm}: FAILED at ${l.mode} with return value ${l.returnValue ?? '?'} (${describeReturnCode(l.returnValue ?? 1)})`,
  );
}
