import { lstat, readdir, rename, rm, rmdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { isLeafName } from '../domain/leafName.js';
import { NodeStepModes } from '../domain/modes.js';
import { selectBackupDirsToPrune } from '../domain/retention.js';
import { KEPT_RECORD_SUFFIX, LIVE_OVERLAY_SUFFIX, MANIFEST_NAME, type BackupLayout } from '../domain/layout.js';
import { parseDomainDisks } from '../hypervisor/domainXml.js';
import { chownByName } from '../hypervisor/ownership.js';
import { isRestoreMode } from '../../workflows/restoreMachine.js';
import { leafActive } from '../control/decideBatch.js';
import { exists, syncDir, writeFileDurably } from './durableFs.js';
import { assertNoSymlinkBelow, chmodNoFollow, listRegularFiles, mkdirBelow } from './safeFs.js';
import { backupFileMode } from '../domain/settings.js';
import { sparseCopy } from './sparseCopy.js';
import { parseManifestEntry, readManifestFile, type BackupManifest, type ManifestFile } from './backupIterations.js';
import { storeDiskImage } from './storeDiskImage.js';
import { dropEarlierCheckpoints } from './checkpoints.js';
import { legacyPoolPath } from './backupLocation.js';
import { finishInterruptedRotation, removeIteration } from './rotateChains.js';
import { allocatedBytes, requireFreeSpace } from './freeSpace.js';
import { recordedKeepFailure } from './keepFailure.js';
import { STARTED_PAUSED_MARKER } from '../domain/layout.js';
import { liveReferenceBelow } from './orphanedRetain.js';
import { seconds, type StepContext, type StepResult } from './StepContext.js';

export type { ManifestFile, BackupManifest } from './backupIterations.js';

/**
 * Retain: copy every retained file into the backup directory under its final
 * name (through `.partial`, fsynced, renamed), write the manifest last, then
 * remove the retain copies and prune old backups. A backup without a
 * manifest is not finished.
 */
export async function retainStep(ctx: StepContext): Promise<StepResult> {
  const { vm, layout, settings, logger, virsh } = ctx;
  const t0 = performance.now();
  if (!(await exists(layout.retainDir))) {
    throw new BackupError(`nothing to retain: ${layout.retainDir} does not exist`, ReturnCode.missingNecessaryFiles);
  }
  if (!(await exists(settings.rootDirectory))) {
    throw new BackupError(`backup root ${settings.rootDirectory} does not exist`, ReturnCode.backupRootMissing);
  }
  await refuseWhileReferenced(ctx);

  // A live snapshot's overlay (already committed and unreferenced, or retain
  // would have refused) is never part of a backup; its disk images are in the
  // backup directory already, recorded in `.kept.json` files.
  // A merge that could not keep a frozen image failed the backup (with its code): never finish it without that disk.
  const keepFailed = await recordedKeepFailure(ctx);
  if (keepFailed) throw keepFailed;
  const inRetain = await listRegularFiles(layout.retainDir);
  const names = inRetain.filter((n) => !n.endsWith('.partial') && !n.endsWith(LIVE_OVERLAY_SUFFIX) && !n.endsWith(KEPT_RECORD_SUFFIX) && n !== STARTED_PAUSED_MARKER).sort();
  const kept = await readKeptRecords(layout, inRetain.filter((n) => n.endsWith(KEPT_RECORD_SUFFIX)));
  const keptNames = new Set(kept.map((k) => k.name));
  for (const required of [layout.stateFileName, layout.xmlFileName, layout.ldifFileName]) {
    if (!names.includes(required) && !keptNames.has(path.basename(layout.backupPath(required)))) throw new BackupError(`${required} is missing in ${layout.retainDir}`, ReturnCode.missingNecessaryFiles);
  }
  // Every disk the backup covers is in retain or kept already. The snapshot chose the live
  // definition's file disks and saved the persistent one: a disk both name is one it covered.
  const fileDiskImages = (xml: string) => parseDomainDisks(xml).flatMap((d) => (d.device === 'disk' && d.type === 'file' && d.source !== undefined ? [{ target: d.target, image: path.basename(d.source) }] : []));
  const liveImages = new Set(fileDiskImages(await virsh.dumpXml(vm.name).catch(() => '')).map((d) => d.image));
  for (const { target, image } of fileDiskImages(await readFile(layout.retainPath(layout.xmlFileName), 'utf8'))) {
    if (!liveImages.has(image)) continue;
    if (!names.includes(image) && !keptNames.has(path.basename(layout.backupPath(image)))) {
      throw new BackupError(`the image of disk ${target} (${image}) is neither in ${layout.retainDir} nor kept in the backup`, ReturnCode.missingNecessaryFiles);
    }
  }
  // Room for every copy before the first byte is written (47/48): an ENOSPC
  // halfway would fail the backup anyway, after filling the backup filesystem.
  const toWrite = (await Promise.all(names.map((n) => allocatedBytes(layout.retainPath(n))))).reduce((a, b) => a + b, 0);
  await requireFreeSpace(layout.backupDir, toWrite, `the backup of ${vm.name}`);
  try {
    await mkdirBelow(settings.rootDirectory, layout.backupDir, settings.directory.mode);
    await chownByName(layout.backupDir, settings.directory.owner, settings.directory.group, logger);
  } catch (err) {
    throw new BackupError(`cannot create ${layout.backupDir}: ${errorMessage(err)}`, ReturnCode.cannotWriteToBackupLocation, { cause: err });
  }

  const total = (await Promise.all(names.map(async (n) => (await lstat(layout.retainPath(n))).size))).reduce((a, b) => a + b, 0);
  let before = 0;
  const files: ManifestFile[] = [...kept];
  // Image formats come from the backup's own definition, never from a header.
  const formats = new Map(
    parseDomainDisks(await readFile(layout.retainPath(layout.xmlFileName), 'utf8').catch(() => ''))
      .filter((d) => d.source !== undefined)
      .map((d) => [path.basename(d.source as string), d.format]),
  );
  // What this run copied: a failure removes it again, so a backup that will
  // not finish takes no room (a retain issued again copies it anew).
  const copiedHere: string[] = [];
  for (const n of names) {
    const final = layout.backupPath(n);
    const partial = `${final}.partial`;
    await rm(partial, { force: true });
    try {
      const kind = fileKind(layout, n);
      const onProgress = (done: number) => ctx.onProgress?.({ step: 'retain', vm: vm.name, leaf: ctx.leaf, message: `copying ${n}`, done: before + done, total });
      const stored: ManifestFile = kind === 'image'
        ? await storeDiskImage(ctx, { source: layout.retainPath(n), format: formats.get(n), imageFileName: n, partial, step: 'retain' })
        : { name: path.basename(final), ...(await sparseCopy(layout.retainPath(n), partial, onProgress, ctx.signal)) };
      await chmodNoFollow(partial, backupFileMode(kind, settings.image.mode));
      await chownByName(partial, settings.image.owner, settings.image.group, logger);
      await rename(partial, final);
      copiedHere.push(final);
      files.push(stored);
      before += (await lstat(layout.retainPath(n))).size;
    } catch (err) {
      await Promise.all([partial, ...copiedHere].map((f) => rm(f, { force: true })));
      await rmdir(layout.backupDir).catch(() => undefined); // only when empty: a live backup's kept files stay
      if (err instanceof BackupError) throw err;
      const full = (err as NodeJS.ErrnoException).code === 'ENOSPC';
      throw new BackupError(
        `cannot copy ${n} to ${layout.backupDir}: ${errorMessage(err)}${full ? '; what this retain had copied is removed again, the retain directory keeps the backup' : ''}`,
        full ? ReturnCode.notEnoughDiskSpace : ReturnCode.cannotCopyFileToBackupLocation,
        { cause: err },
      );
    }
  }
  // The backup directory holds exactly what the manifest lists: no partial of an interrupted try stays.
  for (const n of await readdir(layout.backupDir)) {
    if (n.endsWith(`.${ctx.leaf}.partial`)) await rm(path.join(layout.backupDir, n), { force: true });
  }
  const manifest: BackupManifest = {
    format: 'stoney-backup/1',
    vm: vm.name,
    leaf: ctx.leaf,
    vmType: layout.vmType,
    pool: layout.pool,
    createdAt: new Date().toISOString(),
    files,
  };
  const manifestMode = backupFileMode('manifest', settings.image.mode);
  await writeFileDurably(layout.manifestPath, `${JSON.stringify(manifest, null, 2)}\n`, manifestMode);
  await chownByName(layout.manifestPath, settings.image.owner, settings.image.group, logger);
  await chmodNoFollow(layout.manifestPath, manifestMode); // the umask applied at create
  await syncDir(layout.backupDir);
  // The next backup builds on this one now; earlier checkpoints serve nothing.
  await dropEarlierCheckpoints(ctx);

  try {
    await rm(layout.retainDir, { recursive: true });
  } catch (err) {
    throw new BackupError(`backup complete, but ${layout.retainDir} could not be removed: ${errorMessage(err)}`, ReturnCode.notAllFilesDeletedFromRetain, { cause: err });
  }
  const pruned = (await stillOwnsStep(ctx)) ? await pruneBackupDirectories(ctx) : [];
  const result = { executionTime: { retain: seconds(t0) } };
  logger.info({ vm: vm.name, leaf: ctx.leaf, files: files.length, bytes: total, pruned, ...result.executionTime }, 'retain done');
  return result;
}

/**
 * Pruning removes other backups: only a node that still owns the step does
 * it. The control side may have timed the step out meanwhile (a copy of
 * many hours) and moved the leaf on; the backup made here stays, the prune
 * waits for the next retain. A directory that cannot be asked counts as lost
 * ownership too: a complete backup is not failed for a prune.
 */
async function stillOwnsStep(ctx: StepContext): Promise<boolean> {
  const working = NodeStepModes.retain.working;
  const leaf = await ctx.directory.getLeaf(ctx.leafDn).catch((err: unknown) => {
    ctx.logger.warn({ vm: ctx.vm.name, leaf: ctx.leaf, err: errorMessage(err) }, 'cannot read the leaf before pruning');
    return undefined;
  });
  if (leaf?.mode === working) return true;
  ctx.logger.warn({ vm: ctx.vm.name, leaf: ctx.leaf, mode: leaf?.mode, returnValue: leaf?.returnValue }, `the leaf is no longer ${working} (the control side moved it on?): old backups are not pruned`);
  return false;
}

/** What a retained file is, for its mode in the backup directory. */
function fileKind(layout: BackupLayout, name: string): 'state' | 'xml' | 'ldif' | 'image' {
  if (name === layout.stateFileName) return 'state';
  if (name === layout.xmlFileName) return 'xml';
  if (name === layout.ldifFileName) return 'ldif';
  return 'image';
}

/** Disk images the live merge copied into the backup directory: each must be there with the recorded size. */
async function readKeptRecords(layout: BackupLayout, recordNames: string[]): Promise<ManifestFile[]> {
  const out: ManifestFile[] = [];
  for (const r of recordNames.sort()) {
    let kept: ManifestFile;
    const expected = layout.backupPath(r.slice(0, -KEPT_RECORD_SUFFIX.length));
    try {
      // Checked like a manifest entry: retain is group-writable too.
      kept = parseManifestEntry(JSON.parse(await readFile(layout.retainPath(r), 'utf8')), layout.leaf);
    } catch (err) {
      throw new BackupError(`cannot read ${r} in ${layout.retainDir}: ${errorMessage(err)}`, ReturnCode.missingNecessaryFiles, { cause: err });
    }
    if (kept.name !== path.basename(expected)) {
      throw new BackupError(`${r} does not describe ${path.basename(expected)}`, ReturnCode.missingNecessaryFiles);
    }
    const size = await lstat(expected).then((s) => s.size, () => undefined);
    if (size !== kept.size) {
      throw new BackupError(`${expected} is ${size === undefined ? 'missing' : `${size} bytes, not ${kept.size}`}`, ReturnCode.missingNecessaryFiles);
    }
    out.push(kept);
  }
  return out;
}

/** Never copy away (and then delete) a file a live disk chain still uses. */
async function refuseWhileReferenced(ctx: StepContext): Promise<void> {
  const ref = await liveReferenceBelow(ctx, ctx.layout.retainDir);
  if (ref) throw new BackupError(`disk ${ref.target} of ${ctx.vm.name} still uses ${ref.file}; merge first`, ReturnCode.chainStillReferencesRetain);
}

/**
 * Keep the newest sstBackupNumberOfIterations backups of this VM on disk, by
 * leaf time (selectBackupDirsToPrune). Only directories named like a leaf and
 * holding a manifest or the original implementation's files are ever removed;
 * anything else is left alone.
 */
export async function pruneBackupDirectories(ctx: StepContext): Promise<string[]> {
  const { layout, settings } = ctx;
  await assertNoSymlinkBelow(settings.rootDirectory, layout.vmBackupDir, 'directory');
  await finishInterruptedRotation(ctx);
  const entries = await readdir(layout.vmBackupDir, { withFileTypes: true });
  const leaves = entries.filter((e) => e.isDirectory() && isLeafName(e.name)).map((e) => e.name).sort();
  const complete: string[] = [];
  for (const l of leaves) {
    if (l === layout.leaf || (await exists(path.join(layout.vmBackupDir, l, MANIFEST_NAME))) || (await exists(path.join(layout.vmBackupDir, l, `${layout.vm}.xml.${l}`)))) complete.push(l);
  }
  const protect = new Set([layout.leaf]);
  // Never pull files from under a restore that is reading them.
  for (const l of await ctx.directory.listLeaves(ctx.vm.name)) if (isRestoreMode(l.mode)) protect.add(l.leaf);
  // Whole backups an earlier version wrote under the VM-pool path count towards the iterations too.
  const legacy = await legacyIterations(ctx);
  const pruned = selectBackupDirsToPrune([...complete, ...legacy.leaves], settings.numberOfIterations, protect);
  const removed: string[] = [];
  // Oldest first: each removal folds what the next kept iteration needs of it.
  for (const l of pruned) {
    const done = legacy.leaves.includes(l) && !complete.includes(l) ? await removeUnfinishedBackupDir(path.join(legacy.dir!, l), l, true) : await removeIteration(ctx, l);
    if (done) removed.push(l);
  }
  // Directories of earlier backups that never finished (no manifest: a retain
  // that failed, a disk full) are never restored or built on; without this
  // they would stay for good.
  const active = new Set((await ctx.directory.listLeaves(ctx.vm.name)).filter((l) => leafActive(l)).map((l) => l.leaf));
  for (const l of leaves.filter((x) => x < layout.leaf && !complete.includes(x) && !protect.has(x) && !active.has(x))) {
    if (await removeUnfinishedBackupDir(path.join(layout.vmBackupDir, l), l)) removed.push(l);
  }
  return removed;
}

/**
 * Remove a backup directory that holds only this project's files of its leaf
 * (`withManifest`: and its manifest, a whole backup's); else leave it.
 */
async function removeUnfinishedBackupDir(dir: string, leaf: string, withManifest = false): Promise<boolean> {
  const names = await listRegularFiles(dir).catch(() => undefined);
  const ours = (n: string) => n.endsWith(`.${leaf}`) || n.endsWith(`.${leaf}.partial`) || (withManifest && n === MANIFEST_NAME);
  if (names === undefined || names.some((n) => !ours(n))) return false;
  // The manifest first: from then on the backup no longer counts as restorable.
  for (const n of [...names].sort((a, b) => Number(b === MANIFEST_NAME) - Number(a === MANIFEST_NAME))) await rm(path.join(dir, n));
  await rmdir(dir);
  return true;
}

/**
 * Finished backups of this VM under the VM-pool path of earlier versions
 * (backupLocation.ts), while this backup is under the storage-pool path:
 * whole backups (no chains were ever built there), so removing one is
 * removing its files.
 */
async function legacyIterations(ctx: StepContext): Promise<{ dir: string | undefined; leaves: string[] }> {
  const old = legacyPoolPath(ctx.vm);
  if (!old) return { dir: undefined, leaves: [] };
  const dir = path.join(ctx.settings.rootDirectory, old.vmType, old.pool, ctx.vm.name);
  if (path.resolve(dir) === path.resolve(ctx.layout.vmBackupDir)) return { dir: undefined, leaves: [] };
  try {
    await assertNoSymlinkBelow(ctx.settings.rootDirectory, dir, 'directory');
  } catch {
    return { dir: undefined, leaves: [] }; // none there, or behind a symlink: nothing to count or remove
  }
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const leaves: string[] = [];
  for (const e of entries) {
    if (!e.isDirectory() || !isLeafName(e.name)) continue;
    if ((await exists(path.join(dir, e.name, MANIFEST_NAME))) || (await exists(path.join(dir, e.name, `${ctx.vm.name}.xml.${e.name}`)))) leaves.push(e.name);
  }
  return { dir, leaves };
}

/** The manifest of `<…>/<leaf>/manifest.json`, checked (readManifestFile). */
export async function readManifest(file: string): Promise<BackupManifest> {
  return readManifestFile(file, path.basename(path.dirname(file)));
}
