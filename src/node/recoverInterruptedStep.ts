import { readdir, rename, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { LIVE_OVERLAY_SUFFIX, STARTED_PAUSED_MARKER } from '../domain/layout.js';
import { startsWithPlaceholder } from './stateFile.js';
import { dropKeptFiles } from './keepInBackup.js';
import { stateFileNameOf } from './snapshotStep.js';
import { isBelow } from './backupDisks.js';
import { parseDomainDisks } from '../hypervisor/domainXml.js';
import { exists } from './durableFs.js';
import { mergeStep, mergeIntoLiveImages } from './mergeStep.js';
import { retainStep } from './retainStep.js';
import { recoverInterruptedRestore } from './recoverInterruptedRestore.js';
import type { StepContext, StepResult } from './StepContext.js';
import { privateStateFiles, waitForDomainJob } from './libvirtLeftovers.js';

/**
 * A daemon found one of its leaves in a working ("-ing") mode at start: it
 * died in the middle of the step. Bring the VM back onto an intact chain and
 * say how the step ends: merge and retain are idempotent and are simply
 * finished; an interrupted snapshot is rolled back or merged, and failed; an
 * interrupted restore is rolled back (failed) if it had not yet defined the
 * decided VM, else completed (succeeded) — see recoverInterruptedRestore.
 */
export async function recoverInterruptedStep(ctx: StepContext, workingMode: string): Promise<StepResult> {
  switch (workingMode) {
    case 'snapshotting':
      await recoverSnapshot(ctx);
      throw new BackupError('the snapshot was interrupted by a daemon restart; the VM was brought back onto an intact chain', ReturnCode.interruptedByRestart);
    case 'merging':
      return recoverMerge(ctx);
    case 'retaining':
      if (!(await exists(ctx.layout.retainDir)) && (await exists(ctx.layout.manifestPath))) return { executionTime: {} };
      return retainStep(ctx);
    case 'unretainingSmallFiles':
    case 'unretainingLargeFiles':
      // Nothing live was touched; the retain leftovers go when the restore is aborted or ends.
      throw new BackupError(`${workingMode} was interrupted by a daemon restart; nothing live was touched`, ReturnCode.interruptedByRestart);
    case 'restoring':
      return recoverInterruptedRestore(ctx);
    default:
      throw new BackupError(`no recovery for mode ${workingMode}`, ReturnCode.unknownMode);
  }
}

async function isRealStateFile(file: string): Promise<boolean> {
  if (!(await exists(file))) return false;
  return !(await startsWithPlaceholder(file).catch(() => false));
}

async function recoverSnapshot(ctx: StepContext): Promise<void> {
  const { vm, virsh, layout, settings, logger } = ctx;
  if (!(await virsh.domainExists(vm.name))) return;
  // A live snapshot (or a save) our dead process asked for may still run in libvirtd: judge the world once it is over.
  await waitForDomainJob(ctx);
  let state = await virsh.domState(vm.name);
  if (state === 'paused' && /snapshot|migrat|save/i.test(await virsh.domStateReason(vm.name))) {
    logger.warn({ vm: vm.name, leaf: ctx.leaf }, 'recovery: the VM was left paused by an interrupted snapshot; resuming it');
    await virsh.resume(vm.name);
    state = await virsh.domState(vm.name);
  }
  const candidates = [layout.retainPath(layout.stateFileName)];
  for (const parent of [settings.ramDiskLocation, layout.retainDir]) {
    if (parent !== undefined) candidates.push(...(await privateStateFiles(parent, stateFileNameOf(vm.name, ctx.leaf))));
  }
  const savedState = (await Promise.all(candidates.map(async (f) => ((await isRealStateFile(f)) ? f : undefined)))).find((f) => f !== undefined);

  const onLiveOverlays = parseDomainDisks(await virsh.dumpXml(vm.name, { inactive: true })).some(
    (d) => d.source !== undefined && d.source.endsWith(LIVE_OVERLAY_SUFFIX) && isBelow(settings.retainDirectory, d.source),
  );
  if (onLiveOverlays && (state === 'shut off' || state === 'shutdown' || state === 'crashed')) {
    // A live snapshot switched the disks and the guest stopped later: what it
    // wrote is in the overlays. Fold them back with the VM started paused.
    await virsh.start(vm.name, { paused: true });
    try {
      await mergeIntoLiveImages(ctx, { keepPointInTime: false });
    } finally {
      await virsh.destroy(vm.name);
    }
    if (savedState) await dropState(savedState);
  } else if (state === 'shut off' || state === 'shutdown' || state === 'crashed') {
    // Stopped with disks possibly swapped: the guest has not run on the
    // overlays, so moving the images back loses nothing.
    // Committing the overlays keeps whatever the guest wrote after the snapshot.
    await moveImagesBack(ctx);
    // Old memory may only go back onto the disks if the VM is off *because we
    // saved it*; a VM that ran on the overlays and then crashed (power loss) has
    // newer disk contents than that memory.
    const reason = await virsh.domStateReason(vm.name);
    if (savedState && !/\(saved\)/.test(reason)) {
      logger.warn({ vm: vm.name, leaf: ctx.leaf, reason }, 'recovery: the VM did not stop by our save; its disks are kept, the stale state file dropped, the VM stays off');
      await dropState(savedState);
    } else if (savedState) {
      logger.warn({ vm: vm.name, leaf: ctx.leaf, savedState }, 'recovery: VM was saved but not restored; restoring it on its original images');
      await virsh.restore(savedState);
      await dropState(savedState);
    }
  } else {
    // Running (a live snapshot, or the save's restore, happened): fold the
    // overlays back or pull the retained data in, so that the chain no longer
    // depends on retain. The failed backup's point in time is not kept.
    await mergeIntoLiveImages(ctx, { keepPointInTime: false });
  }
  await removeRetainDirIfNoImages(ctx);
}

async function moveImagesBack(ctx: StepContext): Promise<void> {
  const { virsh, layout, qemuImg, logger } = ctx;
  for (const d of parseDomainDisks(await virsh.dumpXml(ctx.vm.name, { inactive: true }))) {
    if (d.type !== 'file' || d.device !== 'disk' || d.source === undefined) continue;
    const retained = layout.retainPath(path.basename(d.source));
    if (!(await exists(retained))) continue;
    if (await exists(d.source)) {
      // Our overlay is qcow2: read it as such, never probed (a raw image there is not ours).
      const info = await qemuImg.info(d.source, { shared: true, format: 'qcow2' });
      if (info.backingFile !== retained) {
        throw new BackupError(`recovery: ${d.source} exists and is not our overlay of ${retained}; leaving both for a human`, ReturnCode.wrongStateInformation);
      }
      // Keep anything that was written to the overlay by committing it first.
      await qemuImg.commit(d.source, 'qcow2');
      await rm(d.source);
    }
    await rename(retained, d.source);
    logger.warn({ vm: ctx.vm.name, disk: d.target }, 'recovery: moved the image back from retain');
  }
}

async function removeRetainDirIfNoImages(ctx: StepContext): Promise<void> {
  const { layout } = ctx;
  if (!(await exists(layout.retainDir))) return;
  // What the failed backup already kept in the backup directory goes too (its records name it).
  const dropped = await dropKeptFiles(ctx, await readdir(layout.retainDir));
  if (dropped.length) {
    await rmdir(layout.backupDir).catch(() => undefined); // only if nothing else is there
    ctx.logger.info({ vm: ctx.vm.name, removed: dropped }, 'recovery: removed what the failed backup had kept');
  }
  const leftovers = (await readdir(layout.retainDir)).filter(
    (n) => ![layout.stateFileName, layout.xmlFileName, layout.ldifFileName].includes(n) && !n.endsWith('.partial'),
  );
  const referenced = parseDomainDisks(await ctx.virsh.dumpXml(ctx.vm.name)).some((d) => d.backingChain.some((b) => b.startsWith(layout.retainDir + path.sep)));
  if (!referenced) {
    await rm(layout.retainDir, { recursive: true, force: true });
    if (leftovers.length) ctx.logger.info({ vm: ctx.vm.name, removed: leftovers }, 'recovery: removed unreferenced retained images');
  }
}

async function recoverMerge(ctx: StepContext): Promise<StepResult> {
  const { virsh, vm, layout } = ctx;
  const marker = layout.retainPath(STARTED_PAUSED_MARKER);
  if ((await exists(marker)) && (await virsh.domainExists(vm.name)) && (await virsh.domState(vm.name)) === 'paused') {
    // The merge had started this shut-off VM paused (it ran no guest code): finish and stop it again.
    try {
      await mergeIntoLiveImages(ctx, { keepPointInTime: true });
    } finally {
      await virsh.destroy(vm.name);
      await rm(marker, { force: true });
    }
    return { executionTime: {} };
  }
  // Paused by its user or by QEMU, or running: merged as it is, never stopped.
  return mergeStep(ctx);
}

/** Wait (bounded) until libvirt runs no job on the domain: a save or live snapshot outlives the process that asked for it. */

/** Remove a state file, and the private directory it was written in. */
async function dropState(file: string): Promise<void> {
  const dir = path.dirname(file);
  await rm(path.basename(dir).startsWith('.stoney-state-') ? dir : file, { recursive: true, force: true });
}
