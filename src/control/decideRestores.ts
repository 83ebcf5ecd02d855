import { isRestoreMode, nextRestoreMode, type RestoreEvent } from '../../workflows/restoreMachine.js';
import { NodeStepModes } from '../domain/modes.js';
import { ReturnCode } from '../domain/returnCodes.js';
import type { LeafEntry } from '../directory/types.js';
import type { BatchPolicy, ModeWrite } from './decideBatch.js';

/** How long a user may take to decide the conflicts of a restore before it is given up (the leaf back at finished). */
export const DEFAULT_RESTORE_DECISION_TIMEOUT_MS = 24 * 60 * 60 * 1000;
/**
 * A failed unretain step is given up (back to finished: the node then removes
 * what it unretained) only after this long, so that a `stoney-backup restore`
 * process watching the leaf still sees the failure and its code first.
 */
export const FAILED_RESTORE_GRACE_MS = 60 * 1000;

const commands = new Set<string>([NodeStepModes.unretainSmallFiles.command, NodeStepModes.unretainLargeFiles.command, NodeStepModes.restore.command]);
const working = new Set<string>([NodeStepModes.unretainSmallFiles.working, NodeStepModes.unretainLargeFiles.working, NodeStepModes.restore.working]);

/**
 * Whether the control side still has something to do or watch on a leaf:
 * every restore mode except a failed restore, which waits for a human
 * (`stoney-backup restore --abort` acknowledges it).
 */
export function restoreAwaitsControl(l: LeafEntry): boolean {
  return isRestoreMode(l.mode) && !restoreFailed(l);
}

/** A restore that failed after the live VM was touched: it stays at `restored` with its code for a human. */
export function restoreFailed(l: LeafEntry): boolean {
  return l.mode === NodeStepModes.restore.done && (l.returnValue ?? 0) !== 0;
}

/**
 * The control instance's part of the seed's restore protocol (steps 09 and
 * 12), for restores started by any client — the original web UI writes
 * `unretainSmallFiles` and, after the user's decision, `unretainLargeFiles`
 * itself; `stoney-backup restore` does the same and watches. Pure, like
 * decideBatch: the daemon applies the writes as compare-and-swaps, so a
 * watching CLI and the daemon writing the same step cannot both win.
 *
 * - unretainedLargeFiles (0) → restore; restored (0) → finished.
 * - A command no node claims within the claim timeout, a working mode
 *   without a report within the step timeout: the reported mode with 49.
 * - A failed unretain step (nothing live was touched) → finished after a
 *   short grace; the interaction phase (unretainedSmallFiles, 0) left
 *   undecided longer than the decision timeout → finished. The node then
 *   removes what it unretained.
 * - A failed restore stays at `restored` for a human.
 */
export function decideRestores(leaves: readonly LeafEntry[], policy: BatchPolicy, now: Date): ModeWrite[] {
  const writes: ModeWrite[] = [];
  const decisionTimeoutMs = policy.restoreDecisionTimeoutMs ?? DEFAULT_RESTORE_DECISION_TIMEOUT_MS;
  for (const l of leaves) {
    if (!restoreAwaitsControl(l)) continue;
    const rv = l.returnValue ?? 0;
    const age = l.modifiedAt ? now.getTime() - l.modifiedAt.getTime() : 0;
    const write = (event: RestoreEvent, state: ModeWrite['state'], reason: string, returnValue?: number): void => {
      const next = nextRestoreMode(l.mode, rv, event);
      if (next === undefined) return;
      writes.push({ dn: l.dn, vm: l.vm, expected: l.mode, next, state, ...(returnValue !== undefined ? { returnValue } : {}), reason });
    };
    if (commands.has(l.mode)) {
      if (age > policy.claimTimeoutMs) {
        write({ type: 'control.timeout', returnValue: ReturnCode.stepTimedOut }, 'now', `no node claimed ${l.mode} within ${policy.claimTimeoutMs / 1000} s`, ReturnCode.stepTimedOut);
      }
      continue;
    }
    if (working.has(l.mode)) {
      if (age > policy.stepTimeoutMs) {
        write({ type: 'control.timeout', returnValue: ReturnCode.stepTimedOut }, 'now', `no report for ${l.mode} within ${policy.stepTimeoutMs / 1000} s`, ReturnCode.stepTimedOut);
      }
      continue;
    }
    if (rv !== 0) {
      if (age > FAILED_RESTORE_GRACE_MS) write({ type: 'control.abort' }, 'now', `${l.mode} failed with ${rv}; the restore is given up`, 0);
      continue;
    }
    if (l.mode === NodeStepModes.unretainSmallFiles.done) {
      if (age > decisionTimeoutMs) write({ type: 'control.abort' }, 'now', `no decision on the restore within ${decisionTimeoutMs / 1000} s; given up`, 0);
    } else if (l.mode === NodeStepModes.unretainLargeFiles.done) {
      write({ type: 'control.restore' }, 'handover', 'control.restore');
    } else if (l.mode === NodeStepModes.restore.done) {
      write({ type: 'control.finish' }, 'now', 'control.finish');
    }
  }
  return writes;
}
