import { controlDecision } from '../../workflows/backupMachine.js';
import type { LeafEntry } from '../directory/types.js';

/**
 * Backup leaves whose driver went away in the middle: a `kvmbackup` killed
 * mid-run (or a control daemon gone for good) leaves leaves at modes only the
 * control side moves on (`initialize`, `merged`, `retained`, …) that nothing
 * else will ever drive. A leaf counts once nothing changed it for `idleMs`
 * (a live driver writes well within the claim timeout). Grouped by leaf
 * name: each group is one batch to drive on.
 */
export function interruptedBackups(leaves: readonly LeafEntry[], now: Date, idleMs: number): Map<string, LeafEntry[]> {
  const batches = new Map<string, LeafEntry[]>();
  for (const l of leaves) {
    const d = controlDecision(l.mode, l.returnValue ?? 0);
    if (d === undefined || d.kind === 'done') continue;
    const age = l.modifiedAt ? now.getTime() - l.modifiedAt.getTime() : 0;
    if (age < idleMs) continue;
    batches.set(l.leaf, [...(batches.get(l.leaf) ?? []), l]);
  }
  return batches;
}
