import { backupSucceeded } from '../../workflows/backupMachine.js';
import type { Logger } from 'pino';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { parseLeafName, protocolTimestamp } from '../domain/leafName.js';
import type { BackupDirectory, LeafEntry, RestoreRequest, VmEntry } from '../directory/types.js';
import { nextRestoreMode } from '../../workflows/restoreMachine.js';
import { RestoreModes } from '../domain/modes.js';
import { leafActive, type BatchPolicy } from './decideBatch.js';

export type RestoreDecisions = NonNullable<RestoreRequest['decisions']>;

export interface RestoreOptions {
  directory: BackupDirectory;
  vm: VmEntry;
  leaf: LeafEntry;
  /** restore as a new VM of this name */
  target?: string;
  policy: BatchPolicy;
  logger: Logger;
  pollMs?: number;
  signal?: AbortSignal;
  onLeafChange?: (leaf: LeafEntry) => void;
  /** the interaction phase: given the conflicts, decide or abort */
  decide: (conflicts: unknown[]) => Promise<RestoreDecisions | 'abort'>;
}

export interface RestoreOutcome {
  outcome: 'restored' | 'aborted' | 'failed';
  leaf: LeafEntry;
  conflicts: unknown[];
  decisions?: RestoreDecisions;
  /** where and with which code a failed restore stopped (the leaf may be back at finished) */
  failedAt?: { mode: string; returnValue: number };
}

/**
 * Drive a restore from the control side: unretainSmallFiles → (decide or
 * abort) → unretainLargeFiles → restore → finished. Every write is a
 * compare-and-swap; a failure before the restore proper returns the leaf to
 * `finished` (nothing live was touched); a failed restore stays at `restored`
 * with its return value for a human to look at.
 */
export async function runRestore(o: RestoreOptions): Promise<RestoreOutcome> {
  const { directory, leaf } = o;
  if (!backupSucceeded(leaf)) {
    throw new BackupError(`backup ${leaf.leaf} of ${leaf.vm} is not restorable (mode ${leaf.mode}, return value ${leaf.returnValue ?? '?'})`, ReturnCode.wrongStateInformation);
  }
  const others = (await directory.listLeaves(o.vm.name)).filter((l) => l.dn !== leaf.dn && leafActive(l));
  if (others.length > 0 && o.target === undefined) {
    throw new BackupError(`${o.vm.name} has a workflow in progress (${others.map((l) => `${l.leaf}: ${l.mode}`).join(', ')}); restore it when that has ended`, ReturnCode.workflowBusy);
  }
  if (o.target !== undefined && (await directory.getVm(o.target))) {
    throw new BackupError(`a VM ${o.target} exists in the directory already`, ReturnCode.restoreTargetExists);
  }

  const request = { ...(o.target ? { target: o.target } : {}), requestedAt: protocolTimestamp() };
  if (!(await directory.createRestoreRequest(leaf.dn, request))) {
    // Left by a command that died before it started the restore (no retain yet, a minute old)?
    const existing = await directory.getRestoreRequest(leaf.dn);
    const age = existing?.requestedAt ? Date.now() - (parseLeafName(existing.requestedAt)?.toMillis() ?? 0) : Infinity;
    if (existing?.retain !== undefined || age < 60_000) {
      throw new BackupError(`another restore of ${leaf.leaf} is being started or cleaned up; try again in a minute`, ReturnCode.workflowBusy);
    }
    await directory.putRestoreRequest(leaf.dn, request);
  }
  await command(o, 'finished', 'unretainSmallFiles');
  let now = await waitForNode(o, 'unretainSmallFiles', 'unretainedSmallFiles');
  if (now.mode === 'finished') return { outcome: 'aborted', leaf: now, conflicts: [] };
  if (now.returnValue) return { outcome: 'failed', failedAt: failure(now), leaf: await abort(o, now), conflicts: [] };

  const conflicts = (await directory.getRestoreRequest(leaf.dn))?.conflicts ?? [];
  const decision = await o.decide(conflicts);
  if (decision === 'abort') return { outcome: 'aborted', leaf: await abort(o, now), conflicts };
  const current = (await directory.getRestoreRequest(leaf.dn)) ?? {};
  await directory.putRestoreRequest(leaf.dn, { ...current, decisions: decision });

  await command(o, 'unretainedSmallFiles', 'unretainLargeFiles');
  now = await waitForNode(o, 'unretainLargeFiles', 'unretainedLargeFiles');
  if (now.mode === 'finished') return { outcome: 'aborted', leaf: now, conflicts, decisions: decision };
  if (now.mode === 'unretainedLargeFiles' && now.returnValue) {
    return { outcome: 'failed', failedAt: failure(now), leaf: await abort(o, now), conflicts, decisions: decision };
  }

  // From here on a control daemon drives the same steps (decideRestores): whichever writes first wins.
  await command(o, 'unretainedLargeFiles', 'restore', ['restore', 'restoring', 'restored', 'finished']);
  now = await waitForNode(o, 'restore', 'restored');
  // A failed restore stays at `restored`: `finished` means the control daemon ended a good one.
  if (now.mode === 'restored' && now.returnValue) return { outcome: 'failed', failedAt: failure(now), leaf: now, conflicts, decisions: decision };
  await command(o, 'restored', 'finished', ['finished']);
  return { outcome: 'restored', leaf: (await directory.getLeaf(leaf.dn)) ?? now, conflicts, decisions: decision };
}

/** Back to `finished` from the interaction phase or a failed large copy: the node then cleans up. */
export async function abortRestore(directory: BackupDirectory, leaf: LeafEntry, logger: Logger): Promise<LeafEntry> {
  const next = nextRestoreMode(leaf.mode, leaf.returnValue ?? 0, { type: 'control.abort' });
  if (next === undefined) {
    throw new BackupError(`the restore on ${leaf.leaf} is at ${leaf.mode}: it can only be aborted while waiting for decisions (unretainedSmallFiles), after a failed copy or after a failed restore (restored with a code)`, ReturnCode.wrongStateInformation);
  }
  if (!(await directory.casMode(leaf.dn, leaf.mode, next, { state: protocolTimestamp(), returnValue: 0 }))) {
    throw new BackupError(`the leaf ${leaf.leaf} changed while aborting; look again`, ReturnCode.wrongStateInformation);
  }
  logger.info({ vm: leaf.vm, leaf: leaf.leaf, from: leaf.mode }, 'restore aborted');
  return (await directory.getLeaf(leaf.dn)) ?? leaf;
}

/** Whether `mode` comes after `than` in the restore protocol (a control daemon moved on already). */
function pastInRestore(mode: string, than: string): boolean {
  const order: readonly string[] = RestoreModes;
  return order.indexOf(mode) > order.indexOf(than) && order.indexOf(than) >= 0;
}

function failure(l: LeafEntry): { mode: string; returnValue: number } {
  return { mode: l.mode, returnValue: l.returnValue ?? 1 };
}

async function abort(o: RestoreOptions, now: LeafEntry): Promise<LeafEntry> {
  const after = await abortRestore(o.directory, now, o.logger);
  o.onLeafChange?.(after);
  return after;
}

/**
 * Write one step of the restore. `doneByControl`: the modes the leaf may be
 * at already because a control daemon wrote this step first — then there is
 * nothing to write.
 */
async function command(o: RestoreOptions, from: string, to: string, doneByControl: readonly string[] = []): Promise<void> {
  const state = ['finished'].includes(to) ? protocolTimestamp() : '0';
  const written = await o.directory.casMode(o.leaf.dn, from, to, { state });
  const l = await o.directory.getLeaf(o.leaf.dn);
  if (!written && !(l && doneByControl.includes(l.mode))) {
    throw new BackupError(`the leaf ${o.leaf.leaf} was not at ${from} any more; another process is working on it`, ReturnCode.wrongStateInformation);
  }
  if (l) o.onLeafChange?.(l);
}

/** Wait for the node to take `commandMode` and report `doneMode`; fail it on the policy's timeouts. */
async function waitForNode(o: RestoreOptions, commandMode: string, doneMode: string): Promise<LeafEntry> {
  let last = '';
  for (;;) {
    const l = await o.directory.getLeaf(o.leaf.dn);
    if (!l) throw new BackupError(`the leaf ${o.leaf.leaf} disappeared`, ReturnCode.wrongStateInformation);
    if (`${l.mode}/${l.returnValue}` !== last) {
      last = `${l.mode}/${l.returnValue}`;
      o.onLeafChange?.(l);
    }
    // `finished`: given up (or, after the restore, ended) by someone else — the caller tells which.
    if (l.mode === doneMode || l.mode === 'finished' || pastInRestore(l.mode, doneMode)) return l;
    const working = nextRestoreMode(commandMode, 0, { type: 'node.claim' });
    if (l.mode !== commandMode && l.mode !== working) {
      throw new BackupError(`the leaf ${l.leaf} went to ${l.mode} while waiting for ${doneMode}; someone else changed it`, ReturnCode.wrongStateInformation);
    }
    const age = l.modifiedAt ? Date.now() - l.modifiedAt.getTime() : 0;
    const limit = l.mode === commandMode ? o.policy.claimTimeoutMs : o.policy.stepTimeoutMs;
    if (age > limit) {
      const next = nextRestoreMode(l.mode, 0, { type: 'control.timeout', returnValue: ReturnCode.stepTimedOut });
      if (next && (await o.directory.casMode(l.dn, l.mode, next, { state: protocolTimestamp(), returnValue: ReturnCode.stepTimedOut }))) {
        o.logger.warn({ vm: l.vm, leaf: l.leaf, mode: l.mode }, l.mode === commandMode ? 'no node claimed the restore step' : 'no report for the restore step');
      }
      continue;
    }
    await sleep(o.pollMs ?? 250, undefined, { signal: o.signal });
  }
}
