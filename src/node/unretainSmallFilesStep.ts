import { copyFile, readFile, rm } from 'node:fs/promises';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { formatLeafName } from '../domain/leafName.js';
import { assertSafeName } from '../domain/names.js';
import { parseLdif } from '../domain/restore/ldifRecords.js';
import { computeConflicts } from '../domain/restore/restoreConflicts.js';
import { constants } from 'node:fs';
import { exists, writeFileDurably } from './durableFs.js';
import { assertNoSymlinkBelow, mkdirBelow } from './safeFs.js';
import { workLayout } from './restoreWork.js';
import { seconds, type StepContext, type StepResult } from './StepContext.js';

/**
 * unretainSmallFiles: copy the backup's XML and LDIF into a fresh retain
 * directory, compare them with the live VM (directory subtree and libvirt
 * definition) and publish the conflicts: conflicts.json there, and the
 * restore request below the leaf for the CLI and any UI. Touches nothing live.
 */
export async function unretainSmallFilesStep(ctx: StepContext): Promise<StepResult> {
  const { vm, layout, virsh, directory, logger } = ctx;
  const t0 = performance.now();
  const request = (await directory.getRestoreRequest(ctx.leafDn)) ?? {};
  const target = assertSafeName('restore target', request.target ?? vm.name);
  const asNew = target !== vm.name;
  const xmlBackup = layout.backupPath(layout.xmlFileName);
  const ldifBackup = layout.backupPath(layout.ldifFileName);
  for (const f of [xmlBackup, ldifBackup]) {
    if (!(await exists(f))) throw new BackupError(`the backup has no ${f}`, ReturnCode.missingNecessaryFiles);
    // A symlink in the backup would have root read (and hand to the restore) any file it points to.
    await assertNoSymlinkBelow(ctx.settings.rootDirectory, f, 'file');
  }
  if (asNew) {
    if (await directory.getVm(target)) throw new BackupError(`a VM ${target} exists in the directory already`, ReturnCode.restoreTargetExists);
    if (await virsh.domainExists(target)) throw new BackupError(`libvirt knows a VM ${target} already`, ReturnCode.restoreTargetExists);
  }

  const retain = formatLeafName(new Date());
  const work = workLayout(ctx, retain);
  await mkdirBelow(ctx.settings.retainDirectory, work.retainDir, ctx.settings.directory.mode);
  try {
    await copyFile(xmlBackup, work.retainPath(work.xmlFileName), constants.COPYFILE_EXCL);
    await copyFile(ldifBackup, work.retainPath(work.ldifFileName), constants.COPYFILE_EXCL);
    const backupXml = await readFile(work.retainPath(work.xmlFileName), 'utf8');
    const backupLdif = parseLdif(await readFile(work.retainPath(work.ldifFileName), 'utf8'));
    const liveLdif = !asNew && (await directory.getVm(vm.name)) ? parseLdif(await directory.exportVmLdif(vm.name)) : undefined;
    const liveXml = !asNew && (await virsh.domainExists(vm.name)) ? await virsh.dumpXml(vm.name, { inactive: true }) : undefined;
    const conflicts = computeConflicts({ vmDn: vm.dn, backupLdif, liveLdif, backupXml, liveXml });
    await writeFileDurably(work.retainPath('conflicts.json'), `${JSON.stringify(conflicts, null, 2)}\n`);
    await directory.putRestoreRequest(ctx.leafDn, { ...request, retain, conflicts });
    const result = { executionTime: { unretainSmallFiles: seconds(t0) } };
    logger.info({ vm: vm.name, leaf: ctx.leaf, target, conflicts: conflicts.length, retainDir: work.retainDir, ...result.executionTime }, 'small files unretained');
    return result;
  } catch (err) {
    // Nothing of this restore may stay behind when it cannot go on.
    await rm(work.retainDir, { recursive: true, force: true });
    if (err instanceof BackupError) throw err;
    throw new BackupError(`cannot unretain the small files: ${errorMessage(err)}`, ReturnCode.cannotCopyXml, { cause: err });
  }
}
