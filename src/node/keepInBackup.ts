import { readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { KEPT_RECORD_SUFFIX } from '../domain/layout.js';
import { backupFileMode } from '../domain/settings.js';
import { chownByName } from '../hypervisor/ownership.js';
import { exists, syncDir, writeFileDurably } from './durableFs.js';
import { chmodNoFollow, mkdirBelow } from './safeFs.js';
import { sparseCopy } from './sparseCopy.js';
import type { ManifestFile } from './backupIterations.js';
import { storeDiskImage } from './storeDiskImage.js';
import { allocatedBytes, isSpaceError, requireFreeSpace } from './freeSpace.js';
import type { StepContext } from './StepContext.js';

/**
 * Copy a file of this backup straight into the backup directory under its
 * final name `<name>.<leaf>` — the one copy this backup makes of it — and
 * record its size and digest in retain (`<name>.kept.json`, written last) for
 * the manifest. The live method keeps its frozen disk images this way in the
 * merge, and its memory state right after the snapshot (it need not wait in
 * retain: nothing restores a live VM from it). A disk image is stored whole
 * or incrementally (storeDiskImage). Without the record the copy is redone;
 * with it, nothing is.
 */
export async function keepInBackup(ctx: StepContext, source: string, name: string, kind: 'image' | 'state', step: string, format?: string): Promise<void> {
  const { vm, layout, settings, logger } = ctx;
  const record = layout.keptRecordPath(name);
  if (await exists(record)) return;
  if (!(await exists(settings.rootDirectory))) {
    throw new BackupError(`backup root ${settings.rootDirectory} does not exist`, ReturnCode.backupRootMissing);
  }
  const final = layout.backupPath(name);
  const partial = `${final}.partial`;
  // Room before the copy (47, 48): a backup filesystem found full halfway fails the step anyway.
  // A disk image's is checked where it is known how it is stored (storeDiskImage): changes need less.
  if (kind === 'state') await requireFreeSpace(layout.backupDir, await allocatedBytes(source), `${name} of ${vm.name}`);
  ctx.onProgress?.({ step, vm: vm.name, leaf: ctx.leaf, message: `keeping ${name} in the backup` });
  try {
    await mkdirBelow(settings.rootDirectory, layout.backupDir, settings.directory.mode);
    await chownByName(layout.backupDir, settings.directory.owner, settings.directory.group, logger);
    await rm(partial, { force: true });
    let kept: ManifestFile;
    if (kind === 'image') {
      kept = await storeDiskImage(ctx, { source, format, imageFileName: name, partial, step });
    } else {
      const r = await sparseCopy(source, partial, (done, total) => ctx.onProgress?.({ step, vm: vm.name, leaf: ctx.leaf, message: `keeping ${name}`, done, total }), ctx.signal);
      kept = { name: path.basename(final), ...r };
    }
    await chmodNoFollow(partial, backupFileMode(kind, settings.image.mode));
    await chownByName(partial, settings.image.owner, settings.image.group, logger);
    await rename(partial, final);
    await syncDir(layout.backupDir);
    await writeFileDurably(record, `${JSON.stringify(kept)}\n`);
  } catch (err) {
    await rm(partial, { force: true });
    // Renamed but not recorded: nothing would ever name it for removal, and it takes room.
    if (!(await exists(record))) await rm(final, { force: true });
    if (isSpaceError(err)) throw err;
    throw new BackupError(
      `cannot keep ${name} in ${layout.backupDir}: ${errorMessage(err)}`,
      kind === 'state' ? ReturnCode.cannotCopyStateFileToRetain : ReturnCode.cannotCopyImage,
      { cause: err },
    );
  }
}

/** Remove what keepInBackup copied for a backup that will not finish (its records name the files). */
export async function dropKeptFiles(ctx: StepContext, retainNames: string[]): Promise<string[]> {
  const dropped: string[] = [];
  for (const r of retainNames.filter((n) => n.endsWith(KEPT_RECORD_SUFFIX))) {
    const kept = JSON.parse(await readFile(ctx.layout.retainPath(r), 'utf8').catch(() => '{}')) as Partial<ManifestFile>;
    const expected = path.basename(ctx.layout.backupPath(r.slice(0, -KEPT_RECORD_SUFFIX.length)));
    if (kept.name !== expected) continue; // never remove a file a record does not name exactly
    await rm(path.join(ctx.layout.backupDir, expected), { force: true });
    dropped.push(expected);
  }
  return dropped;
}
