import { rm } from 'node:fs/promises';
import { syncFile } from './durableFs.js';
import path from 'node:path';
import { planImageBase, relativeBackingPath, type ImageBasePlan } from '../domain/backupChain.js';
import { errorMessage } from '../domain/errors.js';
import { isImageFormat } from '../hypervisor/QemuImg.js';
import { finishedIterations, listIterationDirs, type ManifestFile } from './backupIterations.js';
import { finishInterruptedRotation } from './rotateChains.js';
import { sparseCopy } from './sparseCopy.js';
import { fileDigest, type DigestedFile } from './fileDigest.js';
import { chainMembers } from './materializeChain.js';
import { copyChangedClusters } from '../hypervisor/copyChangedClusters.js';
import type { ImageInfo } from '../hypervisor/qemuImgInfo.js';
import { trackedChanges, type TrackedChanges } from '../domain/changeTracking.js';
import type { StepContext } from './StepContext.js';
import { allocatedBytes, isSpaceError, requireFreeSpace } from './freeSpace.js';

/**
 * Write one disk image of this backup to `partial` (the caller sets mode and
 * owner and renames it to its final name): whole, or — when an earlier
 * finished backup of the same disk can serve as base (planImageBase) — as a
 * qcow2 image holding only the clusters that differ from it, its backing
 * file the earlier image by a relative path. `source` is the frozen image
 * (nothing writes it while this runs), `format` its format from the domain
 * definition (never probed).
 */
export async function storeDiskImage(
  ctx: StepContext,
  args: { source: string; format: string | undefined; imageFileName: string; partial: string; step: string },
): Promise<ManifestFile> {
  const { layout, settings, logger, vm, qemuImg } = ctx;
  const { source, imageFileName, partial, step } = args;
  const format = isImageFormat(args.format) ? args.format : undefined;
  const name = path.basename(layout.backupPath(imageFileName));
  const info = format ? await qemuImg.info(source, { shared: true, format }) : undefined;
  await finishInterruptedRotation(ctx);
  const iterations = await finishedIterations(await listIterationDirs(settings.rootDirectory, layout.vmBackupDir));
  const plan: ImageBasePlan = info && format
    ? planImageBase({ fileName: name, imageFileName, leaf: layout.leaf, fullEvery: settings.fullEvery, source: { format, hasBacking: info.backingFile !== undefined, virtualSize: info.virtualSize }, iterations })
    : { kind: 'full', reason: `disk format ${JSON.stringify(args.format)} is not one the project reads` };
  const t0 = performance.now();
  if (plan.kind === 'incremental') {
    const base = plan.base;
    const stored = (r: StoredFile, changesFoundBy: 'bitmap' | 'comparison'): ManifestFile => {
      logger.info({ vm: vm.name, leaf: ctx.leaf, image: imageFileName, kind: 'incremental', changesFoundBy, base: base.leaf, depth: plan.depth, bytes: r.size, durationMs: Math.round(performance.now() - t0) }, 'disk image stored incrementally');
      return { ...r, format: 'qcow2', virtualSize: info?.virtualSize ?? 0, backing: base, changesFoundBy };
    };
    const tracked = await trackedChangesOf(ctx, info, plan.base.leaf);
    if (tracked.use === 'bitmap') {
      try {
        return stored(await writeChangedClusters(ctx, { source, partial, plan, step, imageFileName, bitmap: tracked.bitmap, virtualSize: info?.virtualSize ?? 0 }), 'bitmap');
      } catch (err) {
        if (ctx.signal?.aborted || isSpaceError(err)) throw err;
        await rm(partial, { force: true });
        logger.warn({ vm: vm.name, leaf: ctx.leaf, image: imageFileName, base: plan.base.leaf, err: errorMessage(err) }, 'copying by the dirty bitmap failed; finding the changes by comparison');
      }
    } else {
      logger.info({ vm: vm.name, leaf: ctx.leaf, image: imageFileName, base: plan.base.leaf, why: tracked.why }, 'no trusted dirty bitmap; finding the changes by comparison');
    }
    // How much differs is known only afterwards: room for all of it.
    await requireFreeSpace(layout.backupDir, await allocatedBytes(source), `${imageFileName} of ${vm.name}`);
    try {
      return stored(await writeIncremental(ctx, { source, format: format ?? 'qcow2', partial, plan, step, imageFileName }), 'comparison');
    } catch (err) {
      if (ctx.signal?.aborted || isSpaceError(err)) throw err;
      // Never a wrong incremental, and never no backup because the base is unreadable: store it whole.
      await rm(partial, { force: true });
      logger.warn({ vm: vm.name, leaf: ctx.leaf, image: imageFileName, base: plan.base.leaf, err: errorMessage(err) }, 'comparing with the previous backup failed; storing the image whole');
      return storeWhole(ctx, { source, partial, step, imageFileName, format, virtualSize: info?.virtualSize, reason: `comparing with ${plan.base.leaf} failed: ${errorMessage(err)}` });
    }
  }
  const r = await storeWhole(ctx, { source, partial, step, imageFileName, format, virtualSize: info?.virtualSize, reason: plan.reason });
  logger.info({ vm: vm.name, leaf: ctx.leaf, image: imageFileName, kind: 'full', reason: plan.reason, bytes: r.size, durationMs: Math.round(performance.now() - t0) }, 'disk image stored whole');
  return r;
}

/** A file written into the backup: its name there, size and digest. */
type StoredFile = { name: string } & DigestedFile;

async function storeWhole(
  ctx: StepContext,
  a: { source: string; partial: string; step: string; imageFileName: string; format: ManifestFile['format']; virtualSize: number | undefined; reason: string },
): Promise<ManifestFile> {
  await requireFreeSpace(ctx.layout.backupDir, await allocatedBytes(a.source), `${a.imageFileName} of ${ctx.vm.name}`);
  const r = await sparseCopy(a.source, a.partial, (done, total) => ctx.onProgress?.({ step: a.step, vm: ctx.vm.name, leaf: ctx.leaf, message: `keeping ${a.imageFileName}`, done, total }), ctx.signal);
  return {
    name: path.basename(ctx.layout.backupPath(a.imageFileName)),
    ...r,
    ...(a.format ? { format: a.format } : {}),
    ...(a.virtualSize !== undefined ? { virtualSize: a.virtualSize } : {}),
    fullReason: a.reason,
  };
}

/**
 * An empty overlay of the frozen image, rebased in safe mode onto the
 * previous backup's image: qemu-img writes into it exactly the clusters in
 * which the two differ, so the result over its new backing reads as the
 * frozen image — by construction, whatever happened in between.
 */
async function writeIncremental(
  ctx: StepContext,
  a: { source: string; format: 'qcow2' | 'raw'; partial: string; plan: Extract<ImageBasePlan, { kind: 'incremental' }>; step: string; imageFileName: string },
): Promise<StoredFile> {
  const { qemuImg, vm } = ctx;
  const rel = relativeBackingPath(a.plan.base);
  ctx.onProgress?.({ step: a.step, vm: vm.name, leaf: ctx.leaf, message: `storing what changed in ${a.imageFileName} since ${a.plan.base.leaf}` });
  await rm(a.partial, { force: true });
  await qemuImg.createOverlay(a.partial, a.source, a.format);
  await qemuImg.rebaseComparing(a.partial, rel, 'qcow2', ctx.signal);
  return finishIncremental(ctx, { ...a, rel });
}

/** Whether the frozen image's dirty bitmap can say what changed since `baseLeaf` (changeTracking.ts). */
async function trackedChangesOf(ctx: StepContext, info: ImageInfo | undefined, baseLeaf: string): Promise<TrackedChanges> {
  if (info === undefined || info.format !== 'qcow2') return { use: 'comparison', why: 'not a qcow2 image' };
  const checkpoints = await ctx.virsh.checkpointNames(ctx.vm.name).catch(() => [] as string[]);
  return trackedChanges({ baseLeaf, bitmaps: info.bitmaps ?? [], checkpoints, dataFile: info.dataFile });
}

/**
 * The incremental image made from the dirty bitmap: an empty qcow2 image
 * naming the base, into which QEMU copies exactly the marked clusters of
 * the frozen image (copyChangedClusters) — reads and writes only what the
 * guest wrote since the base's moment.
 */
async function writeChangedClusters(
  ctx: StepContext,
  a: { source: string; partial: string; plan: Extract<ImageBasePlan, { kind: 'incremental' }>; step: string; imageFileName: string; bitmap: string; virtualSize: number },
): Promise<StoredFile> {
  const { qemuImg, vm, logger } = ctx;
  const rel = relativeBackingPath(a.plan.base);
  const members = await chainMembers(ctx, a.plan.base);
  // Backup files are untrusted: a member naming a data file would have QEMU open that host file.
  for (const m of members) {
    const header = await qemuImg.info(m.path, { format: 'qcow2' });
    if (header.dataFile !== undefined) throw new Error(`${m.path} names an external data file`);
  }
  const message = `storing what changed in ${a.imageFileName} since ${a.plan.base.leaf} (dirty bitmap)`;
  ctx.onProgress?.({ step: a.step, vm: vm.name, leaf: ctx.leaf, message });
  await rm(a.partial, { force: true });
  await qemuImg.createOnBacking(a.partial, rel, a.virtualSize);
  await copyChangedClusters({
    source: a.source,
    bitmap: a.bitmap,
    target: a.partial,
    targetBacking: members.map((m) => m.path),
    // It reads live storage like the merge's block jobs: the same limit (sstVirtualizationBandwidthMerge, MiB/s).
    speedBytesPerSecond: ctx.settings.bandwidthMerge * 1024 * 1024,
    // Room for what the bitmap marks, checked before QEMU writes a byte: not for the whole disk.
    // (Rounded up to whole clusters, dense changes in a fine bitmap count up to 16 times over: never more than the source holds.)
    beforeCopy: async (bytes) => {
      const most = Math.min(bytes, await allocatedBytes(a.source));
      await requireFreeSpace(ctx.layout.backupDir, most + incrementalMetadataBytes(a.virtualSize), `the ${mib(most)} of ${a.imageFileName} changed since ${a.plan.base.leaf}`);
    },
    ...(ctx.signal ? { signal: ctx.signal } : {}),
    logger,
  });
  return finishIncremental(ctx, { ...a, rel });
}

async function finishIncremental(ctx: StepContext, a: { partial: string; rel: string; step: string; imageFileName: string }): Promise<StoredFile> {
  const { qemuImg, vm } = ctx;
  const rel = a.rel;
  const header = await qemuImg.info(a.partial, { format: 'qcow2' });
  if (header.backingName !== rel) throw new Error(`the incremental image names ${JSON.stringify(header.backingName)} as backing, not ${rel}`);
  await syncFile(a.partial);
  const r = await fileDigest(a.partial);
  // What was written, for the progress and the bytes-copied metric (qemu-img reports none on the way).
  ctx.onProgress?.({ step: a.step, vm: vm.name, leaf: ctx.leaf, message: `stored ${a.imageFileName} (changes only)`, done: 0, total: r.size });
  ctx.onProgress?.({ step: a.step, vm: vm.name, leaf: ctx.leaf, message: `stored ${a.imageFileName} (changes only)`, done: r.size, total: r.size });
  return { name: path.basename(ctx.layout.backupPath(a.imageFileName)), ...r };
}

/**
 * What a qcow2 image of changed clusters holds besides them, at most: header
 * and tables (1 MiB), an L2 table per 512 MiB of the disk that has a change
 * (64 KiB clusters hold 8,192 entries of 8 bytes), refcount blocks, counted
 * twice as generously.
 */
export function incrementalMetadataBytes(virtualSize: number): number {
  return 1024 * 1024 + Math.ceil(virtualSize / 4096);
}

const mib = (bytes: number): string => `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
