import { controlDecision } from '../../workflows/backupMachine.js';
import { isRestoreMode, nextRestoreMode } from '../../workflows/restoreMachine.js';
import type { LeafEntry } from '../directory/types.js';
import { restoreFailed } from './decideRestores.js';

export type UnblockAction =
  /** a failed restore, looked at: back to finished (the backup is good) */
  | { kind: 'acknowledge'; leaf: LeafEntry }
  /** an undecided restore or a failed unretain (nothing live touched): back to finished */
  | { kind: 'abortRestore'; leaf: LeafEntry }
  /** a backup at a mode only the control side moves on: drive it to its end */
  | { kind: 'driveOn'; leaf: LeafEntry }
  /** a node's turn (a command to claim, a step running): not for a client to end */
  | { kind: 'leave'; leaf: LeafEntry };

/**
 * What `stoney-backup unblock VM` does with each of the VM's leaves whose
 * workflow has not ended. Nothing here is destructive: a failed restore is
 * acknowledged, a restore that touched nothing live is aborted, a backup
 * waiting for the control side is driven on (never failed: with the live
 * method a backup past its snapshot has the VM on overlays that only its
 * merge folds back). A leaf that waits for a node is left to the node and
 * the timeouts.
 */
export function planUnblock(leaves: readonly LeafEntry[]): UnblockAction[] {
  const actions: UnblockAction[] = [];
  // Oldest first: one workflow per VM, so a backup behind a node's step waits for that step.
  for (const leaf of [...leaves].sort((a, b) => (a.leaf < b.leaf ? -1 : a.leaf > b.leaf ? 1 : 0))) {
    const rv = leaf.returnValue ?? 0;
    if (restoreFailed(leaf)) actions.push({ kind: 'acknowledge', leaf });
    else if (isRestoreMode(leaf.mode)) {
      actions.push({ kind: nextRestoreMode(leaf.mode, rv, { type: 'control.abort' }) === undefined ? 'leave' : 'abortRestore', leaf });
    } else {
      const d = controlDecision(leaf.mode, rv);
      if (d === undefined || d.kind === 'done') continue;
      const behindANode = actions.some((a) => a.kind === 'leave');
      actions.push({ kind: d.kind === 'write' && !behindANode ? 'driveOn' : 'leave', leaf });
    }
  }
  return actions;
}
