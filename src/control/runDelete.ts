import type { Logger } from 'pino';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { protocolTimestamp } from '../domain/leafName.js';
import type { BackupDirectory, LeafEntry } from '../directory/types.js';
import { leafRemovable, nextDeleteMode } from '../../workflows/deleteMachine.js';
import type { BatchPolicy } from './decideBatch.js';

export interface DeleteOptions {
  directory: BackupDirectory;
  leaf: LeafEntry;
  policy: BatchPolicy;
  logger: Logger;
  pollMs?: number;
  signal?: AbortSignal;
  onLeafChange?: (leaf: LeafEntry) => void;
}

export interface DeleteOutcome {
  outcome: 'deleted' | 'failed';
  /** the leaf as the node left it (`deleted` with its return value) */
  leaf: LeafEntry;
  /** the leaf entry was removed (only after a successful delete) */
  leafRemoved: boolean;
}

/**
 * Delete one backup as the original control instance does: write `delete`
 * on the finished leaf, wait for the VM's node to report `deleted`, and
 * after a successful delete remove the leaf entry. A failed delete leaves
 * the leaf at `deleted` with the node's return value for a human (who may
 * delete again).
 */
export async function runDelete(o: DeleteOptions): Promise<DeleteOutcome> {
  const { directory, leaf } = o;
  if (nextDeleteMode(leaf.mode, leaf.returnValue ?? 0, { type: 'control.delete' }) !== 'delete') {
    throw new BackupError(`backup ${leaf.leaf} of ${leaf.vm} is at ${leaf.mode} (return value ${leaf.returnValue ?? '?'}): only a finished backup, or a failed delete, can be deleted`, ReturnCode.wrongStateInformation);
  }
  if (!(await directory.casMode(leaf.dn, leaf.mode, 'delete', { state: '0' }))) {
    throw new BackupError(`the leaf ${leaf.leaf} was not at ${leaf.mode} any more; another process is working on it`, ReturnCode.wrongStateInformation);
  }
  o.logger.info({ vm: leaf.vm, leaf: leaf.leaf }, 'delete requested');
  const done = await waitForDeleted(o);
  if (!leafRemovable(done.mode, done.returnValue ?? 0)) return { outcome: 'failed', leaf: done, leafRemoved: false };
  await directory.deleteLeaf(done.dn);
  o.logger.info({ vm: leaf.vm, leaf: leaf.leaf }, 'backup deleted and its leaf removed');
  return { outcome: 'deleted', leaf: done, leafRemoved: true };
}

async function waitForDeleted(o: DeleteOptions): Promise<LeafEntry> {
  let last = '';
  for (;;) {
    const l = await o.directory.getLeaf(o.leaf.dn);
    if (!l) throw new BackupError(`the leaf ${o.leaf.leaf} disappeared while it was being deleted`, ReturnCode.wrongStateInformation);
    if (`${l.mode}/${l.returnValue}` !== last) {
      last = `${l.mode}/${l.returnValue}`;
      o.onLeafChange?.(l);
    }
    if (l.mode === 'deleted') return l;
    if (l.mode !== 'delete' && l.mode !== 'deleting') {
      throw new BackupError(`the leaf ${l.leaf} went to ${l.mode} while waiting for deleted; someone else changed it`, ReturnCode.wrongStateInformation);
    }
    const age = l.modifiedAt ? Date.now() - l.modifiedAt.getTime() : 0;
    const limit = l.mode === 'delete' ? o.policy.claimTimeoutMs : o.policy.stepTimeoutMs;
    if (age > limit) {
      const next = nextDeleteMode(l.mode, 0, { type: 'control.timeout', returnValue: ReturnCode.stepTimedOut });
      if (next && (await o.directory.casMode(l.dn, l.mode, next, { state: protocolTimestamp(), returnValue: ReturnCode.stepTimedOut }))) {
        o.logger.warn({ vm: l.vm, leaf: l.leaf, mode: l.mode }, l.mode === 'delete' ? 'no node claimed the delete' : 'no report for the delete');
      }
      continue;
    }
    await sleep(o.pollMs ?? 250, undefined, { signal: o.signal });
  }
}
