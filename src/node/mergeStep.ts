import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { LIVE_OVERLAY_SUFFIX, STARTED_PAUSED_MARKER } from '../domain/layout.js';
import { writeFileDurably } from './durableFs.js';
import { parseDomainDisks, type DomainDisk } from '../hypervisor/domainXml.js';
import type { BlockJobInfo } from '../hypervisor/Virsh.js';
import { isBelow } from './backupDisks.js';
import { liveReferenceBelow } from './orphanedRetain.js';
import { isImageFormat } from '../hypervisor/QemuImg.js';
import { keepInBackup } from './keepInBackup.js';
import { recordedKeepFailure, recordKeepFailure } from './keepFailure.js';
import { faultPoint } from './faultPoint.js';
import { judgeProgress, STALL_MS, stalledMessage, type ProgressWatch } from '../hypervisor/jobProgress.js';
import { seconds, type StepContext, type StepResult } from './StepContext.js';

/**
 * Merge: make every live disk flat again at its own path, so that nothing
 * live references retain any more. What the snapshot left decides how:
 * - a live snapshot's overlay (`<retain…>/<image>.overlay` over the frozen
 *   image): the frozen image is first copied into retain — that copy is the
 *   backup's point-in-time image — and then the overlay is committed into it
 *   (`blockcommit --active --pivot`): QEMU writes only what the guest wrote
 *   since the snapshot;
 * - a save snapshot's overlay over an image moved into retain: the retained
 *   data is pulled into the overlay (`blockpull`).
 * A shut-off VM is started paused for it (it runs no guest code) and
 * destroyed again; the result is checked, not assumed.
 */
export async function mergeStep(ctx: StepContext): Promise<StepResult> {
  const { vm, virsh, layout, logger } = ctx;
  const t0 = performance.now();
  // A VM libvirt does not know fails here with cannotFindMachine (Virsh maps it).
  const runState = await virsh.domState(vm.name);
  const startedByUs = runState === 'shut off' || runState === 'shutdown' || runState === 'crashed';
  const marker = layout.retainPath(STARTED_PAUSED_MARKER);
  if (startedByUs) {
    // Recovery destroys a paused VM only when this says we started it: a guest paused by its user, or by QEMU, must live on.
    await writeFileDurably(marker, `${ctx.leaf}\n`);
    try {
      await virsh.start(vm.name, { paused: true });
    } catch (err) {
      await rm(marker, { force: true });
      throw new BackupError(`cannot start ${vm.name} paused for the merge: ${errorMessage(err)}`, ReturnCode.cannotStartMachine, { cause: err });
    }
  }
  try {
    await mergeIntoLiveImages(ctx, { keepPointInTime: true });
  } finally {
    if (startedByUs) {
      // Started paused, never ran guest code: destroying it loses nothing.
      await virsh.destroy(vm.name).then(
        () => rm(marker, { force: true }),
        (err: unknown) => logger.error({ vm: vm.name, err: errorMessage(err) }, 'cannot stop the VM started for the merge'),
      );
    }
  }
  const result = { executionTime: { merge: seconds(t0) } };
  logger.info({ vm: vm.name, leaf: ctx.leaf, runState, ...result.executionTime, retainDir: layout.retainDir }, 'merge done');
  return result;
}

function isLiveOverlay(retainRoot: string, d: DomainDisk): d is DomainDisk & { source: string } {
  return d.source !== undefined && d.source.endsWith(LIVE_OVERLAY_SUFFIX) && isBelow(retainRoot, d.source);
}

/**
 * Flatten every live disk whose chain runs into retain; then prove none does.
 * keepPointInTime: a live overlay's frozen image is copied into this backup's
 * retain directory before the commit changes it (recovery of an interrupted
 * snapshot passes false: that backup has failed, only the guest's data counts).
 */
export async function mergeIntoLiveImages(ctx: StepContext, opts: { keepPointInTime: boolean }): Promise<void> {
  const { vm, virsh, qemuImg, settings, layout } = ctx;
  const retainRoot = settings.retainDirectory;
  const before = parseDomainDisks(await virsh.dumpXml(vm.name));
  const committed: string[] = [];
  // This backup's failure to keep a frozen image (recorded by a run before a crash, or now):
  // every overlay is still committed, without being kept, and then it is thrown.
  let keepFailure: { err: unknown } | undefined;
  if (opts.keepPointInTime) {
    const recorded = await recordedKeepFailure(ctx);
    if (recorded) keepFailure = { err: recorded };
  }
  for (const d of before) {
    if (isLiveOverlay(retainRoot, d)) {
      const failed = await commitLiveOverlay(ctx, d, { keep: opts.keepPointInTime && keepFailure === undefined, ownOverlaysOnly: opts.keepPointInTime });
      keepFailure ??= failed;
      committed.push(d.source);
      continue;
    }
    const lastRetained = d.backingChain.map((b) => isBelow(retainRoot, b)).lastIndexOf(true);
    if (lastRetained < 0) continue;
    // A linked clone's template below the retained image stays where it is.
    const base = d.backingChain[lastRetained + 1];
    ctx.onProgress?.({ step: 'merge', vm: vm.name, leaf: ctx.leaf, message: `pulling ${d.target}` });
    try {
      await virsh.blockPull(vm.name, d.target, settings.bandwidthMerge, base);
      await waitForBlockJob(ctx, d.target);
    } catch (err) {
      throw new BackupError(`block pull of ${d.target} failed: ${errorMessage(err)}`, ReturnCode.cannotMergeDiskImages, { cause: err });
    }
  }
  const after = parseDomainDisks(await virsh.dumpXml(vm.name));
  for (const d of after) {
    const stale = [d.source, ...d.backingChain].find((b) => b !== undefined && isBelow(retainRoot, b));
    if (stale !== undefined) {
      throw new BackupError(`after the merge ${d.target} still references ${stale}`, ReturnCode.cannotMergeDiskImages);
    }
    if (d.type === 'file' && d.device === 'disk' && d.source !== undefined && before.find((b) => b.target === d.target)?.backingChain.length) {
      // The image header is what a later start or backup reads: check it too.
      const info = await qemuImg.info(d.source, { shared: true, ...(isImageFormat(d.format) ? { format: d.format } : {}) });
      if (info.backingFile !== undefined && isBelow(retainRoot, info.backingFile)) {
        throw new BackupError(`after the merge the header of ${d.source} still names ${info.backingFile}`, ReturnCode.cannotMergeDiskImages);
      }
    }
  }
  // Nothing references the committed overlays any more, nor one of this backup that a run
  // which died after its commit left (its disk is flat now, so it was not among those committed).
  for (const f of committed) await rm(f, { force: true });
  const leftovers = (await readdir(layout.retainDir).catch(() => [] as string[])).filter((n) => n.endsWith(LIVE_OVERLAY_SUFFIX));
  // Both definitions and the image headers must be clear of retain first (the check above read the live XML only).
  if (leftovers.length > 0 && (await liveReferenceBelow(ctx, layout.retainDir)) === undefined) {
    for (const n of leftovers) await rm(layout.retainPath(n), { force: true });
  }
  if (keepFailure) throw keepFailure.err;
}

/**
 * One disk of a live snapshot: keep the frozen image (copied straight into the
 * backup directory, durable before anything changes the original), then
 * commit the overlay into the original and pivot the guest onto it. A commit left running by a dead
 * predecessor is taken over, not started twice.
 *
 * When the frozen image cannot be kept (the backup filesystem is full, a
 * read fails) the backup has failed, but the overlay is committed all the
 * same and the failure returned: a guest left on an overlay in retain would
 * keep writing there, and every later backup of it would be refused (55)
 * until a human folded it back. An abort (the daemon stopping) leaves the
 * overlay to recovery at the next start instead.
 */
async function commitLiveOverlay(ctx: StepContext, d: DomainDisk & { source: string }, o: { keep: boolean; ownOverlaysOnly: boolean }): Promise<{ err: unknown } | undefined> {
  const { vm, virsh, layout, settings, logger } = ctx;
  const frozen = d.backingChain[0];
  if (frozen === undefined || !ctx.imageRoots.some((r) => isBelow(r, frozen)) || isBelow(settings.retainDirectory, frozen)) {
    throw new BackupError(`${d.target} runs on ${d.source}, whose backing ${frozen ?? '(none)'} is not an image of the VM; leaving it for a human`, ReturnCode.wrongStateInformation);
  }
  const job = await virsh.blockJob(vm.name, d.target);
  if (o.ownOverlaysOnly && job === undefined && path.dirname(d.source) !== layout.retainDir) {
    throw new BackupError(`${d.target} runs on ${d.source}, an overlay of another backup: it was not merged`, ReturnCode.chainStillReferencesRetain);
  }
  let keepFailure: { err: unknown } | undefined;
  if (o.keep && job === undefined) {
    try {
      await keepInBackup(ctx, frozen, path.basename(frozen), 'image', 'merge', d.backingFormats[0]);
    } catch (err) {
      if (ctx.signal?.aborted) throw err;
      keepFailure = { err };
      // Not recorded (retain's filesystem full too?): retain still refuses a backup without the image.
      await recordKeepFailure(ctx, err).catch((e: unknown) => logger.error({ vm: vm.name, leaf: ctx.leaf, disk: d.target, err: errorMessage(err), recordErr: errorMessage(e) }, 'the frozen image could not be kept, nor the failure recorded; committing the overlay all the same'));
    }
  }
  ctx.onProgress?.({ step: 'merge', vm: vm.name, leaf: ctx.leaf, message: `committing ${d.target}` });
  try {
    if (job === undefined) {
      await virsh.blockCommitActive(vm.name, d.target, settings.bandwidthMerge);
    } else {
      logger.warn({ vm: vm.name, disk: d.target, job }, 'a block job of an earlier run is still there; waiting for it and pivoting');
    }
    await waitForBlockJob(ctx, d.target);
  } catch (err) {
    throw new BackupError(`block commit of ${d.target} failed: ${errorMessage(err)}`, ReturnCode.cannotMergeDiskImages, { cause: err });
  }
  if (keepFailure) faultPoint('merge:committed-unkept');
  return keepFailure;
}

/**
 * Wait for the block job on `target` for as long as it makes progress — a
 * pull or commit of a large disk runs for hours at a limited bandwidth, and a
 * fixed timeout would fail it every night while libvirtd carries on. A
 * commit or copy waits at 100 % for the pivot, which is done here; a pull
 * ends by itself. A job that makes no progress for STALL_MS (judgeProgress)
 * fails the step; the job itself is left to libvirtd.
 */
async function waitForBlockJob(ctx: StepContext, target: string): Promise<void> {
  const { virsh, vm } = ctx;
  let watch: ProgressWatch | undefined;
  let polls = 0;
  for (;;) {
    if (ctx.signal?.aborted) throw new Error(`stopped while waiting for the block job on ${target}`);
    let job: BlockJobInfo | undefined;
    try {
      job = await virsh.blockJob(vm.name, target);
    } catch (err) {
      // libvirtd restarting (or busy) does not end the job inside QEMU: keep
      // watching; a look that fails counts as no progress, so a libvirtd that
      // stays away fails the step after STALL_MS like a stuck job.
      if (err instanceof BackupError && err.code === ReturnCode.cannotFindMachine) throw err;
      ctx.logger.warn({ vm: vm.name, disk: target, err: errorMessage(err) }, 'cannot read the block job; watching on');
      const r = judgeProgress(watch, { active: true, progress: watch?.progress }, Date.now(), STALL_MS);
      watch = r.watch;
      if (r.verdict === 'stalled') throw new Error(stalledMessage(`the block job on ${target}`, STALL_MS, watch?.progress), { cause: err });
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    if (job === undefined) return; // it ended (e.g. pivoted before we died); the caller checks the chain
    if (job.percent >= 100 && !/pull/i.test(job.type)) {
      try {
        await virsh.blockJobPivot(vm.name, target);
        return;
      } catch (err) {
        // 100 % shown a moment before libvirt calls the job ready, or libvirtd
        // away for a moment: look again (a pivot that did happen ends the job).
        ctx.logger.warn({ vm: vm.name, disk: target, err: errorMessage(err) }, 'pivot not done; looking at the block job again');
      }
    }
    const last = watch?.progress;
    const r = judgeProgress(watch, { active: true, progress: job.percent }, Date.now(), STALL_MS);
    watch = r.watch;
    // A line per tenth of the job, not per poll.
    if (last === undefined || Math.floor(job.percent / 10) !== Math.floor(last / 10)) ctx.onProgress?.({ step: 'merge', vm: vm.name, leaf: ctx.leaf, message: `${job.type.toLowerCase()} of ${target}: ${Math.floor(job.percent / 10) * 10} %` });
    if (r.verdict === 'stalled') throw new Error(stalledMessage(`the block job on ${target} (${job.type})`, STALL_MS, job.percent));
    // A small delta is committed within tens of milliseconds: look again soon at first, then every 200 ms.
    await new Promise((r) => setTimeout(r, Math.min(200, 25 * 2 ** polls++)));
  }
}
