import { errorMessage } from '../domain/errors.js';
import { checkpointName, checkpointsToDrop } from '../domain/changeTracking.js';
import type { DomainDisk } from '../hypervisor/domainXml.js';
import type { BackupDisk } from './backupDisks.js';
import type { StepContext } from './StepContext.js';

/**
 * Before a live snapshot: a libvirt checkpoint named after this leaf, so
 * that the next backup finds what changed since this one by its dirty
 * bitmap (changeTracking.ts). Only for qcow2 disks without a backing file
 * (the ones an incremental backup can build on). Failing to create it costs
 * the next backup speed, never correctness: it then compares contents.
 */
export async function createCheckpointForNextBackup(ctx: StepContext, disks: readonly BackupDisk[], allDisks: readonly DomainDisk[]): Promise<void> {
  const { virsh, vm, logger } = ctx;
  const name = checkpointName(ctx.leaf);
  const tracked = new Set(disks.filter((d) => d.format === 'qcow2' && (allDisks.find((a) => a.target === d.target)?.backingChain.length ?? 0) === 0).map((d) => d.target));
  if (tracked.size === 0) return;
  const t0 = performance.now();
  try {
    await virsh.checkpointCreate(vm.name, name, allDisks.map((d) => ({ target: d.target, bitmap: tracked.has(d.target) })));
    logger.info({ vm: vm.name, leaf: ctx.leaf, checkpoint: name, disks: [...tracked], durationMs: Math.round(performance.now() - t0) }, 'checkpoint created for the next incremental backup');
  } catch (err) {
    // A retried snapshot of this leaf keeps the checkpoint made before the first try: it started earlier, so it marks more, never less.
    if (/already exists/i.test(errorMessage(err))) return;
    logger.warn({ vm: vm.name, leaf: ctx.leaf, checkpoint: name, err: errorMessage(err) }, 'cannot create a checkpoint; the next backup finds its changes by comparison');
  }
}

/**
 * Once the backup `ctx.leaf` is finished, the checkpoints of earlier ones
 * are no longer a base for anything: delete them (their bitmaps would keep
 * recording forever). A failure is only logged; the next finished backup
 * tries again.
 */
export async function dropEarlierCheckpoints(ctx: StepContext): Promise<void> {
  const { virsh, vm, logger } = ctx;
  let names: string[];
  try {
    names = checkpointsToDrop(await virsh.checkpointNames(vm.name), ctx.leaf);
  } catch (err) {
    logger.warn({ vm: vm.name, leaf: ctx.leaf, err: errorMessage(err) }, 'cannot list checkpoints');
    return;
  }
  for (const name of names) {
    try {
      try {
        await virsh.checkpointDelete(vm.name, name);
      } catch (err) {
        // The save method's merge (block pull) makes new images without the bitmaps: only libvirt's record is left.
        if (!/bitmap .* not found/i.test(errorMessage(err))) throw err;
        await virsh.checkpointDelete(vm.name, name, { metadataOnly: true });
      }
      logger.info({ vm: vm.name, leaf: ctx.leaf, checkpoint: name }, 'checkpoint of an earlier backup deleted');
    } catch (err) {
      if (/inactive domain/i.test(errorMessage(err))) {
        // libvirt 9 deletes checkpoints of running VMs only; a stale one costs a little bitmap upkeep until then.
        logger.info({ vm: vm.name, leaf: ctx.leaf, checkpoints: names }, 'the VM is off: earlier checkpoints are deleted after a backup while it runs');
        return;
      }
      logger.warn({ vm: vm.name, leaf: ctx.leaf, checkpoint: name, err: errorMessage(err) }, 'cannot delete the checkpoint of an earlier backup; the next finished backup tries again');
    }
  }
}
