import { backupSucceeded } from '../../workflows/backupMachine.js';
import type { Logger } from 'pino';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../domain/errors.js';
import type { BackupDirectory, LeafEntry, VmEntry } from '../directory/types.js';
import { applyModeWrites } from './applyModeWrites.js';
import { batchDone, decideBatch, vmsBusyElsewhere, type BatchPolicy } from './decideBatch.js';
import { pruneLeaves } from './pruneLeaves.js';

export interface BatchOptions {
  directory: BackupDirectory;
  vms: VmEntry[];
  leaf: string;
  policy: BatchPolicy;
  logger: Logger;
  pollMs?: number;
  signal?: AbortSignal;
  /** called whenever a leaf of the batch changes mode */
  onLeafChange?: (leaf: LeafEntry) => void;
}

/**
 * Drive one batch from the control side until every leaf has ended: create
 * the leaves, then re-read them and write the next commands until done. The
 * node side (a node daemon, or one started in-process by kvmbackup) does the
 * steps. Used by `backup` and `kvmbackup`; the control daemon uses the same
 * decideBatch on its own schedule.
 */
export async function runBackupBatch(o: BatchOptions): Promise<LeafEntry[]> {
  const names = o.vms.map((v) => v.name);
  for (const vm of o.vms) {
    const created = await o.directory.createLeaf(vm.name, o.leaf);
    o.logger.info({ vm: vm.name, leaf: o.leaf, created }, created ? 'leaf created' : 'leaf exists already; driving it on');
  }
  const lastMode = new Map<string, string>();
  const nodeOf = new Map(o.vms.map((v) => [v.name.toLowerCase(), v.node.toLowerCase()]));
  for (;;) {
    const all = await o.directory.listLeavesOfVms(names);
    const leaves = all.filter((l) => l.leaf === o.leaf);
    for (const l of leaves) {
      if (lastMode.get(l.dn) !== `${l.mode}/${l.returnValue}`) {
        lastMode.set(l.dn, `${l.mode}/${l.returnValue}`);
        o.onLeafChange?.(l);
      }
    }
    if (batchDone(leaves)) {
      for (const vm of o.vms) {
        const l = leaves.find((x) => x.vm === vm.name);
        if (l && backupSucceeded(l)) {
          await pruneLeaves(o.directory, vm, o.logger).catch((err: unknown) => o.logger.error({ vm: vm.name, err: errorMessage(err) }, 'pruning leaves failed'));
        }
      }
      return leaves;
    }
    const writes = decideBatch(leaves, o.policy, new Date(), vmsBusyElsewhere(all, o.leaf), (vm) => nodeOf.get(vm.toLowerCase()) ?? '');
    if (writes.length > 0) {
      await applyModeWrites(o.directory, writes, o.logger);
      continue;
    }
    await sleep(o.pollMs ?? 250, undefined, { signal: o.signal });
  }
}
