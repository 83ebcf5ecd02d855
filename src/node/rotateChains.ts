import { lstat, open, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { foldsForRemoval, parseChainLink, relativeBackingPath, type ChainLink, type Fold } from '../domain/backupChain.js';
import { BackupError, errorMessage } from '../domain/errors.js';
import { FOLD_JOURNAL, MANIFEST_NAME, ROTATION_MARKER } from '../domain/layout.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { backupFileMode } from '../domain/settings.js';
import { chownByName } from '../hypervisor/ownership.js';
import { finishedIterations, listIterationDirs, readManifestFile } from './backupIterations.js';
import { exists, syncDir, syncFile, writeFileDurably } from './durableFs.js';
import { faultPoint } from './faultPoint.js';
import { fileDigest } from './fileDigest.js';
import { chmodNoFollow } from './safeFs.js';
import type { StepContext } from './StepContext.js';

/**
 * Removing an iteration that a kept incremental image builds on: that image
 * first absorbs its backing image (a fold), so every kept iteration stays
 * restorable at every instant, a kill included:
 *   1. `.rotation-remove` in the removed iteration: it is never restored or
 *      built on again (its image is about to carry later clusters);
 *   2. `fold.json` in the kept iteration (what folds into what);
 *   3. `qemu-img commit -d` of the kept image into its backing image — the
 *      kept image is left as it is, so its chain reads the same throughout;
 *   4. the backing image, now holding the kept image's content, is renamed
 *      over the kept image (atomic);
 *   5. the kept iteration's manifest gets the new size and digest, and the
 *      backing image's own backing (none: the image is whole now);
 *   6. the journal goes, then the removed iteration's directory.
 * Each step can run again: finishInterruptedRotation completes what a
 * killed run left.
 */

type ChainContext = Pick<StepContext, 'settings' | 'layout' | 'qemuImg' | 'logger' | 'signal'>;

interface FoldJournal {
  child: ChainLink;
  parent: ChainLink;
  /** what the parent image itself was stored relative to (it becomes the child's backing) */
  parentBacking?: ChainLink;
}

/**
 * Remove iteration `leaf` of the VM, folding first what kept iterations
 * still need of it. `keepDirectory`: only make it independent (the delete
 * step removes the files itself, with its own checks). Returns false, and
 * removes nothing, when two kept iterations build on one of its images.
 */
export async function removeIteration(ctx: ChainContext, leaf: string, opts: { keepDirectory?: boolean } = {}): Promise<boolean> {
  const { layout, settings, logger } = ctx;
  const dirs = await listIterationDirs(settings.rootDirectory, layout.vmBackupDir);
  const target = dirs.find((d) => d.leaf === leaf);
  if (target === undefined) return true;
  const { folds, blocked } = foldsForRemoval(await finishedIterations(dirs, { includeBeingRemoved: true }), leaf);
  if (blocked.length > 0) {
    logger.warn({ vm: layout.vm, leaf, blocked }, 'two kept backups build on an image of this backup; it is kept until one of them goes');
    return false;
  }
  if (!target.beingRemoved) await writeFileDurably(path.join(target.dir, ROTATION_MARKER), `${new Date().toISOString()}\n`, 0o600);
  for (const fold of folds) {
    const parentBacking = target.manifest?.files.find((f) => f.name === fold.parent.name)?.backing;
    const journal: FoldJournal = { child: fold.child, parent: fold.parent, ...(parentBacking ? { parentBacking } : {}) };
    const childDir = path.join(layout.vmBackupDir, fold.child.leaf);
    await writeFileDurably(path.join(childDir, FOLD_JOURNAL), `${JSON.stringify(journal)}\n`, 0o600);
    await completeFold(ctx, journal);
  }
  faultPoint('rotation:before-remove');
  if (!opts.keepDirectory) await rm(target.dir, { recursive: true });
  logger.info({ vm: layout.vm, leaf, folded: folds.map((f: Fold) => f.child.leaf) }, opts.keepDirectory ? 'backup made independent of for removal' : 'backup removed');
  return true;
}

/** Complete every fold and removal a killed run left for this VM. */
export async function finishInterruptedRotation(ctx: ChainContext): Promise<void> {
  const { layout, settings } = ctx;
  for (const d of await listIterationDirs(settings.rootDirectory, layout.vmBackupDir)) {
    const journalPath = path.join(d.dir, FOLD_JOURNAL);
    if (!(await exists(journalPath))) continue;
    ctx.logger.warn({ vm: layout.vm, leaf: d.leaf }, 'completing a fold of an interrupted rotation');
    await completeFold(ctx, await readJournal(journalPath, d.leaf));
  }
  for (const d of await listIterationDirs(settings.rootDirectory, layout.vmBackupDir)) {
    if (d.beingRemoved) await removeIteration(ctx, d.leaf);
  }
}

async function readJournal(file: string, childLeaf: string): Promise<FoldJournal> {
  const h = await open(file, 'r');
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(await h.readFile('utf8')) as Record<string, unknown>;
  } finally {
    await h.close();
  }
  const child = parseChainLink(o['child']);
  const parent = parseChainLink(o['parent']);
  const parentBacking = o['parentBacking'] === undefined ? undefined : parseChainLink(o['parentBacking']);
  if (!child || !parent || child.leaf !== childLeaf || !(parent.leaf < child.leaf) || (o['parentBacking'] !== undefined && (!parentBacking || !(parentBacking.leaf < parent.leaf)))) {
    throw new BackupError(`${file} is not a fold journal this project wrote`, ReturnCode.wrongStateInformation);
  }
  return { child, parent, ...(parentBacking ? { parentBacking } : {}) };
}

async function isRegularFile(p: string): Promise<boolean> {
  return lstat(p).then((s) => s.isFile(), () => false);
}

async function completeFold(ctx: ChainContext, j: FoldJournal): Promise<void> {
  const { layout, qemuImg, logger, settings } = ctx;
  const childDir = path.join(layout.vmBackupDir, j.child.leaf);
  const parentDir = path.join(layout.vmBackupDir, j.parent.leaf);
  const childPath = path.join(childDir, j.child.name);
  const parentPath = path.join(parentDir, j.parent.name);
  const t0 = performance.now();
  if (!(await isRegularFile(childPath))) throw new BackupError(`${childPath} is missing or not a regular file; cannot fold`, ReturnCode.missingNecessaryFiles);
  const parentPresent = await exists(parentPath);
  if (!parentPresent && (await qemuImg.info(childPath, { format: 'qcow2' })).backingName === relativeBackingPath(j.parent)) {
    // Not renamed by an earlier run: the image was lost. Nothing can make the child whole; say so and go on.
    logger.error({ vm: layout.vm, leaf: j.child.leaf, image: j.child.name, missing: `${j.parent.leaf}/${j.parent.name}` }, 'cannot fold: the backing image is gone, this backup is not restorable (verify reports it)');
    await rm(path.join(childDir, FOLD_JOURNAL), { force: true });
    return;
  }
  if (parentPresent) {
    const header = await qemuImg.info(childPath, { format: 'qcow2' });
    if (header.backingName !== relativeBackingPath(j.parent)) {
      throw new BackupError(`${childPath} names ${JSON.stringify(header.backingName)} as backing, not ${j.parent.leaf}'s image; fold refused`, ReturnCode.wrongStateInformation);
    }
    // qemu-img follows the header's relative name; it must reach a plain file, never a link planted there.
    if (!(await isRegularFile(parentPath))) throw new BackupError(`${parentPath} is not a regular file; fold refused`, ReturnCode.symlinkRefused);
    faultPoint('fold:before-commit');
    try {
      await qemuImg.commitKeepingTop(childPath, ctx.signal);
    } catch (err) {
      throw new BackupError(`cannot fold ${j.child.leaf} into ${j.parent.leaf}: ${errorMessage(err)}`, ReturnCode.cannotMergeDiskImages, { cause: err });
    }
    await syncFile(parentPath);
    faultPoint('fold:after-commit');
    await rename(parentPath, childPath);
    await syncDir(childDir);
    await syncDir(parentDir);
    faultPoint('fold:after-rename');
  }
  // The child's file is the folded image now: whole, or relative to the parent's own backing.
  const expected = j.parentBacking ? relativeBackingPath(j.parentBacking) : undefined;
  const header = await qemuImg.info(childPath, { format: 'qcow2' });
  if (header.backingName !== expected) {
    throw new BackupError(`after folding, ${childPath} names ${JSON.stringify(header.backingName)} as backing, not ${JSON.stringify(expected)}`, ReturnCode.wrongStateInformation);
  }
  const r = await fileDigest(childPath);
  const manifestPath = path.join(childDir, MANIFEST_NAME);
  const manifest = await readManifestFile(manifestPath, j.child.leaf);
  manifest.files = manifest.files.map((f) => {
    if (f.name !== j.child.name) return f;
    // The image now holds what two backups changed: how either's changes were found no longer describes it.
    // Its content is new, and so is its digest (of the kind new copies record).
    const { backing: _old, fullReason: _reason, changesFoundBy: _found, sha256: _sum, sha256PerMiB: _perMiB, size: _size, ...rest } = f;
    return {
      ...rest,
      ...r,
      ...(j.parentBacking ? { backing: j.parentBacking } : { fullReason: `made whole when ${j.parent.leaf} was removed by rotation` }),
    };
  });
  const mode = backupFileMode('manifest', settings.image.mode);
  await writeFileDurably(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`, mode);
  await chownByName(manifestPath, settings.image.owner, settings.image.group, logger);
  await chmodNoFollow(manifestPath, mode);
  faultPoint('fold:after-manifest');
  await rm(path.join(childDir, FOLD_JOURNAL), { force: true });
  await syncDir(childDir);
  logger.info({ vm: layout.vm, leaf: j.child.leaf, image: j.child.name, into: j.parent.leaf, bytes: r.size, durationMs: Math.round(performance.now() - t0) }, 'incremental image folded');
}
