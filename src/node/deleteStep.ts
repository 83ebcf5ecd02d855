import { lstat, readdir, rmdir, unlink } from 'node:fs/promises';
import path from 'node:path';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { MANIFEST_NAME, ROTATION_MARKER } from '../domain/layout.js';
import { finishInterruptedRotation, removeIteration } from './rotateChains.js';
import { leafActive } from '../control/decideBatch.js';
import { exists } from './durableFs.js';
import { assertNoSymlinkBelow } from './safeFs.js';
import { seconds, type StepContext, type StepResult } from './StepContext.js';

/**
 * Delete one backup's files: `<root>/<vm-type>/<storage-pool>/<vm>/<leaf>/`,
 * as the original node does on `delete`. Only names that belong to this
 * backup go (`<file>.<leaf>`, their `.partial` leftovers, the manifest);
 * anything else found there is left alone and reported (13), so a wrong
 * directory is never emptied. The leaf's retain directory is never touched:
 * a backup that stopped before retain may still have its images there under
 * a live disk chain. Running it again after a crash is safe: what is gone
 * stays gone, and a missing directory is a finished delete.
 */
export async function deleteStep(ctx: StepContext): Promise<StepResult> {
  const { layout, settings, logger, vm, leaf } = ctx;
  const t0 = performance.now();
  const busy = (await ctx.directory.listLeaves(vm.name)).filter((l) => l.leaf !== leaf && leafActive(l));
  if (busy.length > 0) {
    throw new BackupError(`${vm.name} has a workflow in progress (${busy.map((l) => `${l.leaf}: ${l.mode}`).join(', ')}); delete ${leaf} when it has ended`, ReturnCode.workflowBusy);
  }
  const dir = layout.backupDir;
  await assertNoSymlinkBelow(settings.rootDirectory, dir, 'directory');
  if (!(await exists(dir))) {
    logger.warn({ backupDir: dir }, 'the backup directory does not exist; nothing to delete');
    return { executionTime: { delete: seconds(t0) } };
  }
  // A kept incremental backup that builds on this one absorbs what it needs first.
  await finishInterruptedRotation(ctx);
  if (!(await removeIteration(ctx, leaf, { keepDirectory: true }))) {
    throw new BackupError(`two later backups of ${vm.name} build on ${leaf}; it cannot be deleted before one of them`, ReturnCode.workflowBusy);
  }
  const names = await readdir(dir);
  const ours = (n: string) => n === MANIFEST_NAME || n === ROTATION_MARKER || n.endsWith(`.${leaf}`) || n.endsWith(`.${leaf}.partial`);
  // The manifest goes first: from then on the backup no longer counts as
  // complete (not restorable), even if a later removal fails.
  const order = [...names.filter((n) => n === MANIFEST_NAME), ...names.filter((n) => n !== MANIFEST_NAME && ours(n)).sort()];
  for (const n of order) {
    const p = path.join(dir, n);
    const st = await lstat(p);
    if (st.isDirectory()) continue; // never recurse into something that is not a backup file
    try {
      await unlink(p); // removes a symlink itself, never what it points to
    } catch (err) {
      throw new BackupError(`cannot remove ${p}: ${errorMessage(err)}`, ReturnCode.cannotRemoveFile, { cause: err });
    }
  }
  const left = await readdir(dir);
  if (left.length > 0) {
    throw new BackupError(`${dir} holds files that are not part of backup ${leaf} (${left.join(', ')}); they and the directory were left`, ReturnCode.cannotRemoveFile);
  }
  try {
    await rmdir(dir);
  } catch (err) {
    throw new BackupError(`cannot remove ${dir}: ${errorMessage(err)}`, ReturnCode.cannotRemoveFile, { cause: err });
  }
  logger.info({ backupDir: dir, files: order.length }, 'backup deleted');
  return { executionTime: { delete: seconds(t0) } };
}
