import { controlDecision } from '../../workflows/backupMachine.js';
import { isRestoreMode } from '../../workflows/restoreMachine.js';
import { parseLeafName } from '../domain/leafName.js';
import type { LeafEntry } from '../directory/types.js';

/**
 * What monitoring needs to know of one VM's backups, from its leaves alone.
 * Times are the leaves' planned instants (the leaf names): the point in time
 * a backup holds, which is what "no backup younger than a day" is about.
 * The one definition behind both `stoney-backup check` and the control
 * daemon's metrics, so an alert and a check never disagree.
 */
export interface VmBackupHealth {
  /** newest backup that finished with return value 0 */
  lastSuccess: Date | undefined;
  /** newest backup that stopped with a non-zero return value */
  lastFailure: Date | undefined;
  /** the newest backup that has ended (or stopped), failed: a newer success would hide an older failure */
  newestFailed: boolean;
  /** leaves whose workflow is still open with a non-zero return value: they wait for a human */
  blocked: LeafEntry[];
  /** leaves whose workflow runs (return value 0), with their planned instants */
  running: { leaf: LeafEntry; plannedAt: Date }[];
}

export function vmBackupHealth(leaves: readonly LeafEntry[]): VmBackupHealth {
  const h: VmBackupHealth = { lastSuccess: undefined, lastFailure: undefined, newestFailed: false, blocked: [], running: [] };
  let newestEnded: { at: Date; ok: boolean } | undefined;
  for (const l of leaves) {
    const at = parseLeafName(l.leaf)?.toJSDate();
    if (at === undefined) continue; // not a backup leaf name: nothing to date it by
    const rv = l.returnValue ?? 0;
    // A restore runs on a backup that had finished; while it runs the backup still counts as good.
    const decision = isRestoreMode(l.mode) ? undefined : controlDecision(l.mode, rv);
    if (isRestoreMode(l.mode) || (decision !== undefined && decision.kind !== 'done')) {
      if (rv !== 0) h.blocked.push(l);
      else h.running.push({ leaf: l, plannedAt: at });
      if (!isRestoreMode(l.mode)) continue;
      // the backup under a restore finished well
      if (h.lastSuccess === undefined || at > h.lastSuccess) h.lastSuccess = at;
      if (newestEnded === undefined || at > newestEnded.at) newestEnded = { at, ok: true };
      continue;
    }
    if (decision === undefined) continue; // delete in progress or an unknown mode: no backup to judge
    if (decision.ok) {
      if (h.lastSuccess === undefined || at > h.lastSuccess) h.lastSuccess = at;
    } else if (h.lastFailure === undefined || at > h.lastFailure) {
      h.lastFailure = at;
    }
    if (newestEnded === undefined || at > newestEnded.at) newestEnded = { at, ok: decision.ok };
  }
  h.newestFailed = newestEnded !== undefined && !newestEnded.ok;
  return h;
}
