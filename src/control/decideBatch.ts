import { controlDecision as machineDecision, timeoutTarget } from '../../workflows/backupMachine.js';
import { isRestoreMode } from '../../workflows/restoreMachine.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { BackupCommandModes, NodeStepModes } from '../domain/modes.js';
import type { LeafEntry } from '../directory/types.js';
import { restoreFailed } from './decideRestores.js';

export interface BatchPolicy {
  /**
   * Leaves of one batch in merge/retain at the same time ON ONE NODE (the
   * seed: one after another). The work is the node's disk I/O, so nodes do
   * not wait for each other.
   */
  mergeConcurrency: number;
  /** a command nobody claimed for this long is failed */
  claimTimeoutMs: number;
  /** a working mode without a report for this long is failed */
  stepTimeoutMs: number;
  /** a restore waiting for the user's decision this long is given up (default 24 h, decideRestores) */
  restoreDecisionTimeoutMs?: number;
}

export const defaultBatchPolicy: BatchPolicy = {
  mergeConcurrency: 1,
  claimTimeoutMs: 5 * 60 * 1000,
  stepTimeoutMs: 6 * 60 * 60 * 1000,
};

/** One compare-and-swap the control side should write. */
export interface ModeWrite {
  dn: string;
  vm: string;
  expected: string;
  next: string;
  /** "0" when handing a step over, a timestamp otherwise */
  state: 'handover' | 'now';
  returnValue?: number;
  reason: string;
}

/**
 * The machine's answer depends only on mode and return value, and running
 * the xstate machine costs tens of microseconds: a batch of thousands is
 * decided many times a second. Remembered per (mode, return value); the
 * set of modes is small, and odd values written by hand are few.
 */
const decisions = new Map<string, ReturnType<typeof machineDecision>>();
function controlDecision(mode: string, returnValue: number): ReturnType<typeof machineDecision> {
  const key = `${mode}\u0000${returnValue}`;
  if (decisions.has(key)) return decisions.get(key);
  const d = machineDecision(mode, returnValue);
  if (decisions.size < 10_000) decisions.set(key, d);
  return d;
}

/** The seed's order (localeCompare's), with one collator instead of one per comparison: batches hold thousands. */
const vmOrder = new Intl.Collator();

// Sets of modes, from the one table of node steps (NodeStepModes), for the hot loop.
const { snapshot, merge, retain } = NodeStepModes;
const snapshotPhase = new Set<string>(['initialize', 'initialized', snapshot.command, snapshot.working]);
const mergeRetainInFlight = new Set<string>([merge.command, merge.working, merge.done, retain.command, retain.working]);
const commands = new Set<string>(BackupCommandModes);
const working = new Set<string>(BackupCommandModes.map((c) => NodeStepModes[c].working));

/**
 * The control side's decisions for one batch: the leaves of VMs planned for
 * the same instant (they share the leaf name). Pure: the daemon re-reads the
 * leaves, calls this and writes the result; running it twice on the same
 * directory state gives the same writes, and the CAS makes stale writes fail.
 *
 * Rules (seed, "Backup multiple machines at the same time"): every VM is
 * snapshotted first; only when no leaf of the batch is still before or in its
 * snapshot are the successful ones merged and retained, `mergeConcurrency`
 * at a time per node (`nodeOf`; without it the whole batch counts as one
 * node, the seed's rule), in VM name order within a node; a failed step ends
 * that VM's backup where it failed. A VM in `busyVms` (an older backup of it
 * still runs) is not snapshotted yet.
 */
export function decideBatch(
  leaves: LeafEntry[],
  policy: BatchPolicy,
  now: Date,
  busyVms: ReadonlySet<string> = new Set(),
  nodeOf: (vm: string) => string = () => '',
): ModeWrite[] {
  const writes: ModeWrite[] = [];
  const snapshotsPending = leaves.some((l) => snapshotPhase.has(l.mode) && !busyVms.has(l.vm));
  // A failed or timed-out merge/retain has ended: it must not hold a slot.
  const inFlight = new Map<string, number>();
  for (const l of leaves) {
    if (mergeRetainInFlight.has(l.mode) && controlDecision(l.mode, l.returnValue ?? 0)?.kind !== 'done') {
      const node = nodeOf(l.vm);
      inFlight.set(node, (inFlight.get(node) ?? 0) + 1);
    }
  }
  const ordered = [...leaves].sort((a, b) => vmOrder.compare(a.vm, b.vm));
  for (const l of ordered) {
    const age = l.modifiedAt ? now.getTime() - l.modifiedAt.getTime() : 0;
    if (commands.has(l.mode) && age > policy.claimTimeoutMs) {
      const next = timeoutTarget(l.mode, ReturnCode.stepTimedOut);
      if (next) writes.push({ dn: l.dn, vm: l.vm, expected: l.mode, next, state: 'now', returnValue: ReturnCode.stepTimedOut, reason: `no node claimed ${l.mode} within ${policy.claimTimeoutMs / 1000} s` });
      continue;
    }
    if (working.has(l.mode) && age > policy.stepTimeoutMs) {
      const next = timeoutTarget(l.mode, ReturnCode.stepTimedOut);
      if (next) writes.push({ dn: l.dn, vm: l.vm, expected: l.mode, next, state: 'now', returnValue: ReturnCode.stepTimedOut, reason: `no report for ${l.mode} within ${policy.stepTimeoutMs / 1000} s` });
      continue;
    }
    const d = controlDecision(l.mode, l.returnValue ?? 0);
    if (d?.kind !== 'write') continue;
    if (d.next === 'snapshot' && busyVms.has(l.vm)) continue; // an older backup of this VM has not ended
    if (d.next === 'merge') {
      const node = nodeOf(l.vm);
      const busy = inFlight.get(node) ?? 0;
      if (snapshotsPending || busy >= policy.mergeConcurrency) continue;
      inFlight.set(node, busy + 1);
    }
    const handover = commands.has(d.next);
    writes.push({ dn: l.dn, vm: l.vm, expected: l.mode, next: d.next, state: handover ? 'handover' : 'now', reason: d.event });
  }
  return writes;
}

/**
 * VMs whose leaf in batch `leaf` must wait before its snapshot, because one
 * workflow per VM runs at a time: another leaf of the VM is active (past
 * `initialized` and not ended), or is also waiting and is older. A waiting
 * leaf does not hold up its own batch's merges (decideBatch), so two batches
 * sharing VMs cannot wait on each other in a circle.
 */
export function vmsBusyElsewhere(allLeaves: LeafEntry[], leaf: string): Set<string> {
  const busy = new Set<string>();
  for (const l of allLeaves) {
    if (l.leaf === leaf || !leafActive(l)) continue;
    const waiting = l.mode === 'initialize' || l.mode === 'initialized';
    if (!waiting || l.leaf < leaf) busy.add(l.vm);
  }
  return busy;
}

/**
 * Whether a leaf's workflow — backup or restore — is still running (or, for a
 * restore, waiting for the user's decision). A failed restore is not: it
 * waits for a human to acknowledge it, while the VM's backups go on. One answer for every "is this VM busy?"
 * question: scheduling, restore preconditions, status, pruning.
 */
export function leafActive(l: LeafEntry): boolean {
  // A failed restore waits for a human, but the VM runs (rolled back): its backups go on.
  if (isRestoreMode(l.mode)) return !restoreFailed(l);
  const d = controlDecision(l.mode, l.returnValue ?? 0);
  return d !== undefined && d.kind !== 'done';
}

/** True when every leaf of the batch has ended (finished, or failed where it stopped). */
export function batchDone(leaves: LeafEntry[]): boolean {
  return leaves.every((l) => {
    const d = controlDecision(l.mode, l.returnValue ?? 0);
    return d === undefined || d.kind === 'done';
  });
}
