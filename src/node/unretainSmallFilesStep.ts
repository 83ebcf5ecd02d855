import { copyFile, readFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { assertSafeName } from '../domain/names.js';
import { backupFileMode } from '../domain/settings.js';
import { parseLdif } from '../domain/restore/ldifRecords.js';
import { computeConflicts } from '../domain/restore/restoreConflicts.js';
import { chownByName } from '../hypervisor/ownership.js';
import { exists, writeFileDurably } from './durableFs.js';
import { assertNoSymlinkBelow, chmodNoFollow } from './safeFs.js';
import { unretainedPath } from './restoreWork.js';
import { createRestoreWorkDir, removeRestoreWorkDir } from './restoreWorkDir.js';
import { seconds, type StepContext, type StepResult } from './StepContext.js';

/**
 * unretainSmallFiles: copy the backup's XML and LDIF into the leaf's retain
 * directory as the original does (`<retain>/…/<vm>/<leaf>/<vm>.xml.<leaf>`,
 * `<vm>.ldif.<leaf>`: where the original web UI reads them), compare them
 * with the live VM (directory subtree and libvirt definition) and publish
 * the conflicts: conflicts.json there, and the restore request below the
 * leaf for the CLI and any UI (made here when a client of the original
 * protocol started the restore without one). Touches nothing live.
 */
export async function unretainSmallFilesStep(ctx: StepContext): Promise<StepResult> {
  const { vm, layout, settings, virsh, directory, logger } = ctx;
  const t0 = performance.now();
  const found = await directory.getRestoreRequest(ctx.leafDn);
  // A request that names a work directory already belongs to an earlier restore
  // nobody cleaned up: its target and decisions are not this restore's.
  const request = found?.retain === undefined ? (found ?? {}) : {};
  const target = assertSafeName('restore target', request.target ?? vm.name);
  const asNew = target !== vm.name;
  const xmlBackup = layout.backupPath(layout.xmlFileName);
  const ldifBackup = layout.backupPath(layout.ldifFileName);
  for (const f of [xmlBackup, ldifBackup]) {
    if (!(await exists(f))) throw new BackupError(`the backup has no ${f}`, ReturnCode.missingNecessaryFiles);
    // A symlink in the backup would have root read (and hand to the restore) any file it points to.
    await assertNoSymlinkBelow(settings.rootDirectory, f, 'file');
  }
  if (asNew) {
    if (await directory.getVm(target)) throw new BackupError(`a VM ${target} exists in the directory already`, ReturnCode.restoreTargetExists);
    if (await virsh.domainExists(target)) throw new BackupError(`libvirt knows a VM ${target} already`, ReturnCode.restoreTargetExists);
  }

  const workDir = { retainRoot: settings.retainDirectory, mode: settings.directory.mode, owner: settings.directory.owner, group: settings.directory.group, logger };
  await createRestoreWorkDir(layout, workDir);
  try {
    // Named at once: a daemon killed from here on leaves a directory the clean-up on `finished` finds.
    await directory.putRestoreRequest(ctx.leafDn, { ...request, retain: layout.leaf });
    const xmlFile = unretainedPath(layout, layout.xmlFileName);
    const ldifFile = unretainedPath(layout, layout.ldifFileName);
    for (const [from, to, kind] of [[xmlBackup, xmlFile, 'xml'], [ldifBackup, ldifFile, 'ldif']] as const) {
      await copyFile(from, to, constants.COPYFILE_EXCL);
      // Readable by the image group, as in the backup: the web UI reads the LDIF as such a user.
      await chmodNoFollow(to, backupFileMode(kind, settings.image.mode));
      await chownByName(to, settings.image.owner, settings.image.group, logger);
    }
    const backupXml = await readFile(xmlFile, 'utf8');
    const backupLdif = parseLdif(await readFile(ldifFile, 'utf8'));
    const liveLdif = !asNew && (await directory.getVm(vm.name)) ? parseLdif(await directory.exportVmLdif(vm.name)) : undefined;
    const liveXml = !asNew && (await virsh.domainExists(vm.name)) ? await virsh.dumpXml(vm.name, { inactive: true }) : undefined;
    const conflicts = computeConflicts({ vmDn: vm.dn, backupLdif, liveLdif, backupXml, liveXml });
    await writeFileDurably(layout.retainPath('conflicts.json'), `${JSON.stringify(conflicts, null, 2)}\n`);
    await directory.putRestoreRequest(ctx.leafDn, { ...request, retain: layout.leaf, conflicts });
    const result = { executionTime: { unretainSmallFiles: seconds(t0) } };
    logger.info({ vm: vm.name, leaf: ctx.leaf, target, conflicts: conflicts.length, retainDir: layout.retainDir, ...result.executionTime }, 'small files unretained');
    return result;
  } catch (err) {
    // Nothing of this restore may stay behind when it cannot go on.
    await removeRestoreWorkDir(layout, settings.retainDirectory, { keepRollback: true, logger });
    if (err instanceof BackupError) throw err;
    throw new BackupError(`cannot unretain the small files: ${errorMessage(err)}`, ReturnCode.cannotCopyXml, { cause: err });
  }
}
