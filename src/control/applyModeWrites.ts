import type { Logger } from 'pino';
import { protocolTimestamp } from '../domain/leafName.js';
import type { BackupDirectory, ModeChangeExtras } from '../directory/types.js';
import type { ModeWrite } from './decideBatch.js';
import { forEachLimited } from './forEachLimited.js';

export interface ApplyOptions {
  /** writes in flight at once on the connection (default 1: one after the other) */
  concurrency?: number;
  /** stop sending further writes (the ones in flight complete) */
  signal?: AbortSignal;
  /** a compare-and-swap that won, with what it wrote */
  onApplied?: (w: ModeWrite, extras: ModeChangeExtras) => void;
}

/**
 * Write the control side's decisions, each as one compare-and-swap. A lost
 * race is normal (another control instance, a human, a timeout) and only
 * logged; the next reconcile sees the new state.
 */
export async function applyModeWrites(directory: BackupDirectory, writes: ModeWrite[], logger: Logger, o: ApplyOptions = {}): Promise<number> {
  let applied = 0;
  await forEachLimited(writes, o.concurrency ?? 1, o.signal, async (w) => {
    const extras: ModeChangeExtras = {
      state: w.state === 'handover' ? '0' : protocolTimestamp(),
      ...(w.returnValue !== undefined ? { returnValue: w.returnValue } : {}),
    };
    const ok = await directory.casMode(w.dn, w.expected, w.next, extras);
    if (ok) {
      applied += 1;
      o.onApplied?.(w, extras);
    }
    const level = w.returnValue ? 'warn' : 'info';
    logger[level]({ vm: w.vm, leafDn: w.dn, from: w.expected, to: w.next, reason: w.reason, applied: ok }, ok ? `leaf → ${w.next}` : 'lost race; leaf changed meanwhile');
  });
  return applied;
}
