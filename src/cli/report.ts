import { backupSucceeded } from '../../workflows/backupMachine.js';
import type { LeafEntry } from '../directory/types.js';
import { describeReturnCode } from '../domain/returnCodes.js';
import type { StepProgress } from '../node/StepContext.js';
import { formatEta, formatRate } from '../domain/copyRate.js';
import type { Io } from './runtime.js';

/** Human lines for a leaf's mode changes and a step's progress (stderr). */
export function leafChangeLine(l: LeafEntry): string {
  const rv = l.returnValue ? `  return value ${l.returnValue} (${describeReturnCode(l.returnValue)})` : '';
  return `${l.vm.padEnd(24)} ${l.leaf}  ${l.mode}${rv}`;
}

/** A long copy prints a line this often at most: readable in a log or a cron mail, yet alive on a terminal. */
export const PROGRESS_LINE_EVERY_MS = 5_000;

/**
 * A step's progress as lines on stderr, one per update (never rewritten in
 * place, so a log or a cron mail reads the same as a terminal). A copy's
 * lines show its percentage, throughput and time left, at most one every
 * PROGRESS_LINE_EVERY_MS per VM and step; a new message and a copy's end
 * always print.
 */
export function progressPrinter(io: Io, nowMs: () => number = () => performance.now()): (p: StepProgress) => void {
  const shown = new Map<string, { message: string; line: string; atMs: number }>();
  return (p) => {
    const key = `${p.vm}\u0000${p.leaf}\u0000${p.step}`;
    const copy = p.total ? ` ${Math.floor(((p.done ?? 0) / p.total) * 100)}%${copyFigures(p)}` : '';
    const line = `${p.vm.padEnd(24)} ${p.leaf}  ${p.step}: ${p.message}${copy}`;
    const last = shown.get(key);
    const now = nowMs();
    const due = last === undefined || p.message !== last.message || p.done === p.total || now - last.atMs >= PROGRESS_LINE_EVERY_MS;
    if (!due || line === last?.line) return;
    io.err(line);
    shown.set(key, { message: p.message, line, atMs: now });
  };
}

function copyFigures(p: StepProgress): string {
  const rate = p.bytesPerSecond !== undefined ? ` ${formatRate(p.bytesPerSecond)}` : '';
  const eta = p.etaSeconds !== undefined && p.etaSeconds > 0 ? ` ETA ${formatEta(p.etaSeconds)}` : '';
  return `${rate}${eta}`;
}

export function summarize(leaves: LeafEntry[]): { ok: LeafEntry[]; failed: LeafEntry[] } {
  const ok = leaves.filter(backupSucceeded);
  return { ok, failed: leaves.filter((l) => !ok.includes(l)) };
}

export function resultLines(leaves: LeafEntry[]): string[] {
  return leaves.map((l) =>
    backupSucceeded(l)
      ? `${l.vm}: backed up (${l.leaf}; snapshot ${l.executionTime['snapshot'] ?? '?'} s, downtime ${l.executionTime['downtime'] ?? '?'} s, merge ${l.executionTime['merge'] ?? '?'} s, retain ${l.executionTime['retain'] ?? '?'} s)`
      : `${l.vm}: FAILED at ${l.mode} with return value ${l.returnValue ?? '?'} (${describeReturnCode(l.returnValue ?? 1)})`,
  );
}
