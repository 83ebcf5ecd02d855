import type { Logger } from 'pino';
import { protocolTimestamp } from '../domain/leafName.js';
import type { BackupDirectory } from '../directory/types.js';
import type { ModeWrite } from './decideBatch.js';

/**
 * Write the control side's decisions, each as one compare-and-swap. A lost
 * race is normal (another control instance, a human, a timeout) and only
 * logged; the next reconcile sees the new state.
 */
export async function applyModeWrites(directory: BackupDirectory, writes: ModeWrite[], logger: Logger): Promise<number> {
  let applied = 0;
  for (const w of writes) {
    const ok = await directory.casMode(w.dn, w.expected, w.next, {
      state: w.state === 'handover' ? '0' : protocolTimestamp(),
      ...(w.returnValue !== undefined ? { returnValue: w.returnValue } : {}),
    });
    if (ok) applied += 1;
    const level = w.returnValue ? 'warn' : 'info';
    logger[level]({ vm: w.vm, leafDn: w.dn, from: w.expected, to: w.next, reason: w.reason, applied: ok }, ok ? `leaf → ${w.next}` : 'lost race; leaf changed meanwhile');
  }
  return applied;
}
