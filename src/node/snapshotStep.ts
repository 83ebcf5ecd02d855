import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { NO_STATE_MARKER } from '../domain/layout.js';
import { parseDomainDisks, parseDomainMemoryBytes, stripBackingStores, type DomainDisk } from '../hypervisor/domainXml.js';
import { parseLifecycleEvents, stoppedWindowMs } from '../hypervisor/lifecycleEvents.js';
import { liveOverlayName } from '../domain/layout.js';
import { mergeIntoLiveImages } from './mergeStep.js';
import { keepInBackup } from './keepInBackup.js';
import { createCheckpointForNextBackup } from './checkpoints.js';
import { chownByName } from '../hypervisor/ownership.js';
import { chooseStateDirectory, requireFreeSpace } from './freeSpace.js';
import { removeOrphanedRetainDirs } from './orphanedRetain.js';
import { selectBackupDisks, type BackupDisk } from './backupDisks.js';
import { exists, moveFile, sameFilesystem, syncDir, writeFileDurably } from './durableFs.js';
import { assertNoSymlinkBelow, chmodNoFollow, createPrivateStateFile, mkdirBelow, openRegularForRead } from './safeFs.js';
import { isBelow } from './backupDisks.js';
import { isImageFormat } from '../hypervisor/QemuImg.js';
import { seconds, type StepContext, type StepResult } from './StepContext.js';
import { faultPoint } from './faultPoint.js';

/**
 * Snapshot: freeze the VM's memory, CPU and disks at one instant with the
 * shortest possible stop. Everything that does not need the VM stopped
 * (checks, XML, LDIF, directories) happens before `virsh save`; inside the
 * stopped window there are only renames, `qemu-img create` of empty
 * overlays and `virsh restore`. Any failure inside the window is undone so
 * the VM runs again on its original images.
 */
export async function snapshotStep(ctx: StepContext): Promise<StepResult> {
  const { vm, layout, settings, virsh, logger } = ctx;
  const t0 = performance.now();
  const progress = (message: string, done?: number, total?: number) => ctx.onProgress?.({ step: 'snapshot', vm: vm.name, leaf: ctx.leaf, message, done, total });

  // --- Checks: nothing is touched until all pass.
  // The type says what the VM is (persistent, dynamic, template); a VM without
  // one is not a stoney VM we know how to back up: refused, not guessed.
  if (vm.type === '') {
    throw new BackupError(`VM ${vm.name} has no sstVirtualMachineType; set it (e.g. persistent) before backing it up`, ReturnCode.missingVirtualMachineType);
  }
  // Read at once; a VM libvirt does not know fails here with cannotFindMachine (Virsh maps it).
  // The inactive definition of a transient VM is its live one.
  const [runState, liveXml, inactiveXml] = await Promise.all([virsh.domState(vm.name), virsh.dumpXml(vm.name), virsh.dumpXml(vm.name, { inactive: true })]);
  if (!(await exists(settings.retainDirectory))) {
    throw new BackupError(`retain directory ${settings.retainDirectory} does not exist`, ReturnCode.retainRootMissing);
  }
  const disks = selectBackupDisks(parseDomainDisks(liveXml), ctx.imageRoots, settings.retainDirectory, logger);
  if (disks.length === 0) logger.warn({ vm: vm.name }, 'VM has no file-backed disk; only its state, XML and LDIF are backed up');
  for (const d of disks) {
    if (!(await sameFilesystem(path.dirname(d.source), settings.retainDirectory))) {
      throw new BackupError(
        `retain directory ${settings.retainDirectory} is not on the filesystem of ${d.source}; the disk move must be a rename`,
        ReturnCode.retainNotOnImageFilesystem,
      );
    }
  }
  // Retain directories of earlier backups nothing will read again go first: the room they free counts below.
  await removeOrphanedRetainDirs(ctx);
  const runs = runState === 'running' || runState === 'paused' || runState === 'blocked' || runState === 'idle';
  const stateDir = runs ? await requireRoomForState(ctx, parseDomainMemoryBytes(liveXml)) : undefined;
  try {
    await mkdirBelow(settings.retainDirectory, layout.retainDir, settings.directory.mode);
  } catch (err) {
    throw new BackupError(`cannot create ${layout.retainDir}: ${errorMessage(err)}`, ReturnCode.cannotCreateDirectory, { cause: err });
  }
  for (const d of disks) {
    const root = ctx.imageRoots.find((r) => isBelow(r, d.source)) as string;
    await assertNoSymlinkBelow(root, d.source, 'file');
    if (!isImageFormat(d.format)) {
      throw new BackupError(`disk ${d.target} has format ${JSON.stringify(d.format)}; only raw and qcow2 are backed up`, ReturnCode.unsupportedConfigurationParameter);
    }
  }
  for (const d of disks) {
    if (await exists(layout.retainPath(d.fileName))) {
      throw new BackupError(`${layout.retainPath(d.fileName)} exists already; refusing to overwrite a retained image`, ReturnCode.cannotRenameDiskImage);
    }
  }

  // --- Outside the window: XML and directory entry as of now.
  progress('saving XML and directory entry');
  const definitionXml = inactiveXml;
  try {
    await writeFileDurably(layout.retainPath(layout.xmlFileName), stripBackingStores(definitionXml));
  } catch (err) {
    throw new BackupError(`cannot write the XML: ${errorMessage(err)}`, ReturnCode.cannotSaveXml, { cause: err });
  }
  try {
    await writeFileDurably(layout.retainPath(layout.ldifFileName), await ctx.directory.exportVmLdif(vm.name));
  } catch (err) {
    throw new BackupError(`cannot save the directory entry: ${errorMessage(err)}`, ReturnCode.cannotSaveBackendEntry, { cause: err });
  }
  const retainState = layout.retainPath(layout.stateFileName);

  let downtime = 0;
  if (stateDir !== undefined && settings.snapshotMethod === 'live') {
    downtime = await liveSnapshot(ctx, disks, parseDomainDisks(liveXml), stateDir);
  } else if (stateDir !== undefined) {
    const state = await createStateFile(ctx, stateDir);
    const stateFile = state.file;
    let stateMoved = false;
    try {
      progress(`saving memory state to ${stateFile}`);
      const tDown = performance.now();
      try {
        // A crash test kills the daemon while libvirtd writes the state (STONEY_TEST_FAULT).
        await virsh.save(vm.name, stateFile, { onSample: (s) => { if (s.active) faultPoint('snapshot:save-running'); } });
      } catch (err) {
        // libvirtd may have finished the save although virsh failed: never leave the VM stopped.
        if ((await virsh.domState(vm.name)) === 'shut off' && (await exists(stateFile))) {
          logger.error({ vm: vm.name, err: errorMessage(err) }, 'virsh save failed but the VM is stopped; restoring it from the state file');
          await restoreOrKeep(ctx, stateFile, err);
        }
        await rm(stateFile, { force: true });
        throw new BackupError(`virsh save failed: ${errorMessage(err)}`, ReturnCode.cannotSaveMachineState, { cause: err });
      }
      // From here until restore the VM is stopped.
      faultPoint('snapshot:after-save');
      // Beside the state file, in its private directory: whatever removes that (the step, or a
      // recovery after a kill) removes this too.
      const restoreXml = path.join(path.dirname(stateFile), 'restore.xml');
      const swapped: BackupDisk[] = [];
      try {
        await writeFile(restoreXml, stripBackingStores(await virsh.saveImageXml(stateFile)));
        for (const d of disks) {
          await swapInOverlay(ctx, d);
          swapped.push(d);
        }
        faultPoint('snapshot:before-restore');
        await virsh.restore(stateFile, restoreXml);
      } catch (err) {
        // Look at the world before undoing anything: libvirtd may have
        // completed the restore although virsh reported a failure.
        const nowState = await virsh.domState(vm.name).catch(() => 'other' as const);
        if (nowState !== 'shut off') {
          logger.error({ vm: vm.name, leaf: ctx.leaf, err: errorMessage(err), nowState }, 'virsh restore reported a failure but the VM runs; checking its chain instead of undoing');
        } else {
          logger.error({ vm: vm.name, leaf: ctx.leaf, err: errorMessage(err) }, 'snapshot failed inside the stopped window; undoing');
          try {
            await undoSwaps(ctx, swapped);
          } catch (undoErr) {
            // Restoring now would let QEMU open an overlay as if it had no backing.
            throw new BackupError(
              `snapshot failed (${errorMessage(err)}) and moving the images back failed too (${errorMessage(undoErr)}); the VM is left STOPPED with its data intact in ${ctx.layout.retainDir} and ${stateFile}: see docs/restore-runbook.md`,
              ReturnCode.cannotMoveImageBack, { cause: undoErr },
            );
          }
          // Its embedded XML names the original images, which are back in place.
          await restoreOrKeep(ctx, stateFile, err);
          await rm(stateFile, { force: true });
          throw err instanceof BackupError
            ? err
            : new BackupError(`cannot restore the VM onto its new overlays: ${errorMessage(err)}`, ReturnCode.cannotRestoreMachine, { cause: err });
        }
      }
      downtime = seconds(tDown);
      await verifyLiveChain(ctx, disks, stateFile);
      progress('moving the state file into retain');
      await moveStateIntoRetain(stateFile, retainState, (done, total) => progress('copying the state file into retain', done, total));
      stateMoved = true;
    } finally {
      // A VM left stopped (both restores failed, or the images could not be
      // moved back) has its memory only in this file: never delete it then.
      if (stateMoved || (await runsAgain(ctx)) || !(await exists(stateFile))) await state.release();
      else logger.error({ vm: vm.name, leaf: ctx.leaf, stateFile }, 'the VM is stopped and this state file holds its memory: kept for `virsh restore` (docs/restore-runbook.md)');
    }
  } else if (runState === 'shut off' || runState === 'shutdown' || runState === 'crashed') {
    await writeFileDurably(retainState, `${NO_STATE_MARKER}\n`);
    const swapped: BackupDisk[] = [];
    try {
      for (const d of disks) {
        await swapInOverlay(ctx, d);
        swapped.push(d);
      }
    } catch (err) {
      await undoSwaps(ctx, swapped);
      throw err;
    }
  } else {
    throw new BackupError(`VM ${vm.name} is in state "${runState}"; refusing to snapshot`, ReturnCode.cannotLockMachine);
  }
  await syncDir(layout.retainDir);
  const result = { executionTime: { snapshot: seconds(t0), downtime } };
  logger.info({ vm: vm.name, leaf: ctx.leaf, runState, disks: disks.map((d) => d.target), ...result.executionTime }, 'snapshot done');
  return result;
}

/**
 * Bring a VM stopped by our save back from its state file; when even that
 * fails, say so with where its memory is (the caller keeps the file).
 */
async function restoreOrKeep(ctx: StepContext, stateFile: string, first: unknown): Promise<void> {
  try {
    await ctx.virsh.restore(stateFile);
  } catch (err) {
    throw new BackupError(
      `snapshot failed (${errorMessage(first)}) and restoring the VM onto its own images failed too (${errorMessage(err)}); the VM is left STOPPED, its memory in ${stateFile}: see docs/restore-runbook.md`,
      ReturnCode.cannotRestoreMachine, { cause: err },
    );
  }
}

/** Whether the VM is running (or paused) again; false when stopped or when libvirt cannot tell. */
async function runsAgain(ctx: StepContext): Promise<boolean> {
  const state = await ctx.virsh.domState(ctx.vm.name).catch(() => 'other' as const);
  return ['running', 'paused', 'blocked', 'idle', 'in shutdown', 'pmsuspended'].includes(state);
}

/**
 * The live method: memory and disks captured at one instant while the guest
 * runs (libvirt pauses it only to switch the disks). The images stay at their
 * paths, frozen from that instant on; the guest continues on overlays in the
 * retain directory (`<image>.overlay`), which the merge folds back. Returns the
 * stopped window in seconds, measured from libvirt's lifecycle events.
 */
async function liveSnapshot(ctx: StepContext, disks: BackupDisk[], allDisks: DomainDisk[], stateDir: StateDirectory): Promise<number> {
  const state = await createStateFile(ctx, stateDir);
  try {
    return await liveSnapshotTo(ctx, disks, allDisks, state.file);
  } finally {
    await state.release();
  }
}

async function liveSnapshotTo(ctx: StepContext, disks: BackupDisk[], allDisks: DomainDisk[], stateFile: string): Promise<number> {
  const { vm, virsh, layout, logger } = ctx;
  const overlays = disks.map((d) => ({ target: d.target, file: layout.retainPath(liveOverlayName(d.fileName)), disk: d }));
  const others = allDisks.map((d) => d.target).filter((t) => !disks.some((d) => d.target === t));
  // The overlays are made now, while the guest runs, and handed to libvirt
  // ready-made: creating them is then no part of the pause.
  for (const o of overlays) {
    if (await exists(o.file)) throw new BackupError(`${o.file} exists already; refusing to reuse an overlay`, ReturnCode.cannotCreateEmptyDiskImage);
  }
  try {
    for (const o of overlays) await createOverlayPrivately(ctx, o.file, o.disk.source, o.disk.format);
  } catch (err) {
    await Promise.all(overlays.map((o) => rm(o.file, { force: true })));
    throw err;
  }
  ctx.onProgress?.({ step: 'snapshot', vm: vm.name, leaf: ctx.leaf, message: `live snapshot: memory to ${stateFile}, disks onto overlays` });
  // Independent of each other, all before the snapshot: side by side.
  const [watched, , flushed, tightened] = await Promise.allSettled([
    virsh.watchLifecycle(vm.name, 60 * 60 * 1000),
    createCheckpointForNextBackup(ctx, disks, allDisks),
    flushDiskImages(ctx, disks),
    tightenDowntimeLimit(ctx),
  ]);
  const watch = watched.status === 'fulfilled' ? watched.value : undefined;
  if (watched.status === 'rejected') logger.warn({ vm: vm.name, err: errorMessage(watched.reason) }, 'cannot watch lifecycle events; the stopped window is not measured');
  // tightenDowntimeLimit never rejects (it warns and leaves the limit as it was).
  const downtime = tightened.status === 'fulfilled' ? tightened.value : { restore: async () => undefined };
  if (flushed.status === 'rejected') {
    await downtime.restore();
    await watch?.stop();
    await Promise.all(overlays.map((o) => rm(o.file, { force: true })));
    throw new BackupError(`cannot flush the disk images before the snapshot: ${errorMessage(flushed.reason)}`, ReturnCode.cannotSaveMachineState, { cause: flushed.reason });
  }
  let failure: unknown;
  try {
    await virsh.snapshotLive(vm.name, stateFile, overlays, others);
  } catch (err) {
    failure = err;
  } finally {
    await downtime.restore();
  }
  const stoppedMs = watch ? stoppedWindowMs(parseLifecycleEvents(await watch.stop()), Date.now()) : 0;
  // Judge by the world, not by virsh's exit: libvirt may have completed the snapshot.
  const live = parseDomainDisks(await virsh.dumpXml(vm.name));
  const switched = overlays.filter((o) => live.find((l) => l.target === o.target)?.source === o.file);
  if (failure !== undefined && switched.length === 0) {
    if ((await virsh.domState(vm.name)) === 'paused' && /snapshot|migration/i.test(await virsh.domStateReason(vm.name))) await virsh.resume(vm.name);
    await Promise.all([...overlays.map((o) => rm(o.file, { force: true })), rm(stateFile, { force: true })]);
    throw new BackupError(`live snapshot failed: ${errorMessage(failure)}`, ReturnCode.cannotSaveMachineState, { cause: failure });
  }
  const wrong = overlays.filter((o) => {
    const l = live.find((x) => x.target === o.target);
    return l?.source !== o.file || l.backingChain[0] !== o.disk.source;
  });
  if (wrong.length > 0) {
    // The guest runs, on what it wrote: fold whatever overlays exist back, keep nothing of this snapshot.
    logger.error({ vm: vm.name, leaf: ctx.leaf, disks: wrong.map((o) => o.target) }, 'live snapshot left an unexpected chain; folding the overlays back');
    await mergeIntoLiveImages(ctx, { keepPointInTime: false });
    await rm(stateFile, { force: true });
    throw new BackupError(`after the live snapshot, disks ${wrong.map((o) => o.target).join(', ')} were not on their overlays`, ReturnCode.cannotSaveMachineState, { cause: failure });
  }
  // The guest runs again: its memory goes straight to the backup (one copy), not through retain.
  try {
    await keepInBackup(ctx, stateFile, layout.stateFileName, 'state', 'snapshot');
  } catch (err) {
    if (ctx.signal?.aborted) throw err;
    // The backup has failed; the guest must not stay on overlays in retain (every later backup would be refused).
    logger.error({ vm: vm.name, leaf: ctx.leaf, err: errorMessage(err) }, 'the memory state could not be kept; folding the overlays back');
    await mergeIntoLiveImages(ctx, { keepPointInTime: false });
    await rm(stateFile, { force: true });
    throw err;
  }
  logger.info({ vm: vm.name, leaf: ctx.leaf, stoppedMs, method: 'live' }, 'live snapshot taken');
  return Math.round(stoppedMs) / 1000;
}

/**
 * QEMU flushes every disk while the guest is paused for the snapshot; what
 * the host still holds unwritten of the images (after a restore or a block
 * pull: the whole disk) would be written inside that pause — measured
 * 0.3–0.4 s. Written now, while the guest runs, the pause has only the last
 * moments' writes to flush.
 */
async function flushDiskImages(ctx: StepContext, disks: readonly BackupDisk[]): Promise<void> {
  const t0 = performance.now();
  for (const d of disks) {
    const h = await openRegularForRead(d.source);
    try {
      await h.datasync();
    } finally {
      await h.close();
    }
  }
  ctx.logger.debug({ vm: ctx.vm.name, leaf: ctx.leaf, disks: disks.length, durationMs: Math.round(performance.now() - t0) }, 'disk images flushed before the snapshot');
}

/**
 * QEMU pauses the guest for the last part of the memory copy once it thinks
 * that part fits in its downtime limit (300 ms by default). A tight limit
 * makes it copy more while the guest runs; a guest that dirties memory faster
 * than the copy would then never get there, so the limit is relaxed step by
 * step while the snapshot runs, and the domain's own value put back after.
 */
async function tightenDowntimeLimit(ctx: StepContext): Promise<{ restore(): Promise<void> }> {
  const { virsh, vm, logger } = ctx;
  const previous = await virsh.maxDowntimeMs(vm.name).catch(() => undefined);
  if (previous === undefined || !Number.isFinite(previous)) return { restore: async () => undefined };
  const relax: [number, number][] = [[20_000, 100], [60_000, Math.max(previous, 300)], [180_000, Math.max(previous, 2000)]];
  try {
    await virsh.setMaxDowntimeMs(vm.name, 20);
  } catch (err) {
    logger.warn({ vm: vm.name, err: errorMessage(err) }, 'cannot set the migration downtime limit; the final pause may be longer');
    return { restore: async () => undefined };
  }
  const timers = relax.map(([after, ms]) =>
    setTimeout(() => {
      logger.warn({ vm: vm.name, leaf: ctx.leaf, downtimeLimitMs: ms }, 'live snapshot has not converged yet; allowing a longer final pause');
      virsh.setMaxDowntimeMs(vm.name, ms).catch((err: unknown) => logger.warn({ vm: vm.name, err: errorMessage(err) }, 'cannot set the migration downtime limit'));
    }, after),
  );
  return {
    async restore() {
      for (const t of timers) clearTimeout(t);
      await virsh.setMaxDowntimeMs(vm.name, previous).catch((err: unknown) => logger.warn({ vm: vm.name, err: errorMessage(err) }, 'cannot put the migration downtime limit back'));
    },
  };
}

type StateDirectory = Awaited<ReturnType<typeof chooseStateDirectory>>;

/**
 * Room for the guest's memory wherever it goes, checked before the step
 * writes anything: the first dump (RAM disk or retain, chooseStateDirectory:
 * 4/47/48) and its one later copy — into retain when the save method dumped
 * to a RAM disk on another filesystem (the images' filesystem: 47), into the
 * backup directory for the live method (47).
 */
async function requireRoomForState(ctx: StepContext, memoryBytes: number): Promise<StateDirectory> {
  const { settings, layout, vm, logger } = ctx;
  const dir = await chooseStateDirectory({ ramDisk: settings.ramDiskLocation, retainDir: layout.retainDir, memoryBytes, vm: vm.name, logger });
  if (settings.snapshotMethod === 'live') {
    await requireFreeSpace(layout.backupDir, memoryBytes, `the memory state of ${vm.name} in the backup`);
  } else if (dir.onRamDisk && !(await sameFilesystem(dir.dir, settings.retainDirectory))) {
    await requireFreeSpace(layout.retainDir, memoryBytes, `the memory state of ${vm.name} moved from the RAM disk into retain`);
  }
  return dir;
}

/**
 * The state file in a fresh private directory of the chosen place, created
 * exclusively (see createPrivateStateFile): the guest's memory is nobody
 * else's to read or plant. Recovery finds it by its name, `<vm>.<leaf>.state`.
 */
async function createStateFile(ctx: StepContext, parent: StateDirectory): Promise<{ file: string; release: () => Promise<void> }> {
  const dir = parent.onRamDisk ? parent.dir : ctx.layout.retainDir;
  try {
    const p = await createPrivateStateFile(dir, stateFileNameOf(ctx.vm.name, ctx.leaf));
    return { file: p.file, release: p.remove };
  } catch (err) {
    throw new BackupError(`cannot prepare the state file in ${dir}: ${errorMessage(err)}`, parent.onRamDisk ? ReturnCode.ramDiskNotValid : ReturnCode.cannotSaveMachineState, { cause: err });
  }
}

/** The state file's name while it is written (in a private directory). */
export function stateFileNameOf(vm: string, leaf: string): string {
  return `${vm}.${leaf}.state`;
}

/** `onProgress` hears of the copy when the RAM disk is another filesystem (a rename needs none). */
async function moveStateIntoRetain(stateFile: string, retainState: string, onProgress: (done: number, total: number) => void): Promise<void> {
  try {
    await moveFile(stateFile, retainState, onProgress);
  } catch (err) {
    throw new BackupError(`cannot move the state file to retain: ${errorMessage(err)}`, ReturnCode.cannotCopyStateFileToRetain, { cause: err });
  }
}

/**
 * An overlay of `backing` at `dest`, made in a private directory beside it
 * (owner and mode set there) and renamed into place: nobody who can write the
 * image or retain directory can slip a symlink under root's create or chown.
 */
async function createOverlayPrivately(ctx: StepContext, dest: string, backing: string, format: string): Promise<void> {
  const { image } = ctx.settings;
  const dir = await mkdtemp(path.join(path.dirname(dest), '.stoney-overlay-'));
  const tmp = path.join(dir, path.basename(dest));
  try {
    const steps: [() => Promise<unknown>, string, number][] = [
      [() => ctx.qemuImg.createOverlay(tmp, backing, format), `cannot create the overlay ${dest}`, ReturnCode.cannotCreateEmptyDiskImage],
      [() => chownByName(tmp, image.owner, image.group, ctx.logger), `cannot set owner ${image.owner}:${image.group} on ${dest}`, ReturnCode.cannotSetImageOwnership],
      [() => chmodNoFollow(tmp, image.mode), `cannot set mode on ${dest}`, ReturnCode.cannotSetImagePermission],
      [() => rename(tmp, dest), `cannot put the overlay at ${dest}`, ReturnCode.cannotCreateEmptyDiskImage],
    ];
    for (const [step, what, code] of steps) {
      try {
        await step();
      } catch (err) {
        throw err instanceof BackupError ? err : new BackupError(`${what}: ${errorMessage(err)}`, code, { cause: err });
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Rename the image into retain and put an empty overlay backed by it in its place. */
async function swapInOverlay(ctx: StepContext, d: BackupDisk): Promise<void> {
  const retained = ctx.layout.retainPath(d.fileName);
  try {
    await rename(d.source, retained);
  } catch (err) {
    throw new BackupError(`cannot move ${d.source} to retain: ${errorMessage(err)}`, ReturnCode.cannotRenameDiskImage, { cause: err });
  }
  faultPoint('snapshot:after-move');
  try {
    await createOverlayPrivately(ctx, d.source, retained, d.format);
  } catch (err) {
    // Put the image back before anyone can notice it was gone.
    await rm(d.source, { force: true });
    await rename(retained, d.source);
    throw err;
  }
}

/** Remove the (never written) overlays and move the images back, newest first. */
async function undoSwaps(ctx: StepContext, swapped: BackupDisk[]): Promise<void> {
  for (const d of [...swapped].reverse()) {
    await rm(d.source, { force: true });
    await rename(ctx.layout.retainPath(d.fileName), d.source);
  }
}

/**
 * libvirt must show every disk on its overlay with the retained image as
 * backing. If not, the guest runs on a broken view of its disk: stop it at
 * once (the state file still holds its memory), undo the swap and restore
 * onto the original images.
 */
async function verifyLiveChain(ctx: StepContext, disks: BackupDisk[], stateFile: string): Promise<void> {
  const live = parseDomainDisks(await ctx.virsh.dumpXml(ctx.vm.name));
  const wrong = disks.filter((d) => {
    const l = live.find((x) => x.target === d.target);
    return l?.source !== d.source || l.backingChain[0] !== ctx.layout.retainPath(d.fileName);
  });
  if (wrong.length === 0) return;
  ctx.logger.error({ vm: ctx.vm.name, disks: wrong.map((d) => d.target) }, 'restored VM does not see its retained images as backing; rolling back');
  await ctx.virsh.destroy(ctx.vm.name);
  await undoSwaps(ctx, disks);
  await ctx.virsh.restore(stateFile);
  await rm(stateFile, { force: true });
  throw new BackupError(`after restore, disks ${wrong.map((d) => d.target).join(', ')} did not show the retained image as backing`, ReturnCode.cannotRestoreMachine);
}
