import path from 'node:path';
import { BackupError } from './errors.js';
import { ReturnCode } from './returnCodes.js';
import type { BackupSettings } from './settings.js';

/** The original implementation's defaults: where a node writes backups and retain copies unless configured otherwise. */
export const DEFAULT_ALLOWED_ROOTS = ['/var/backup/virtualization', '/var/virtualization/retain'] as const;

function within(root: string, p: string): boolean {
  const rel = path.relative(path.resolve(root), path.resolve(p));
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/**
 * The directory only says where backups go; the node decides where it lets
 * root create, move and delete files. sstBackupRootDirectory,
 * sstBackupRetainDirectory and sstBackupRamDiskLocation must each be one of
 * the node's allowed roots or lie below one (STONEY_ALLOWED_ROOTS), checked
 * before a step touches anything: a directory writer could otherwise point
 * retain pruning or a restore at /etc.
 */
export function assertAllowedDirectories(settings: Pick<BackupSettings, 'rootDirectory' | 'retainDirectory' | 'ramDiskLocation' | 'sourceDn'>, allowedRoots: readonly string[]): void {
  const check = (attribute: string, dir: string | undefined) => {
    if (dir === undefined) return;
    if (!path.isAbsolute(dir) || !allowedRoots.some((r) => within(r, dir))) {
      throw new BackupError(
        `${attribute} ${dir} (from ${settings.sourceDn}) is outside this node's allowed roots ${allowedRoots.join(':')} (STONEY_ALLOWED_ROOTS)`,
        ReturnCode.directoryNotAllowed,
      );
    }
  };
  check('sstBackupRootDirectory', settings.rootDirectory);
  check('sstBackupRetainDirectory', settings.retainDirectory);
  check('sstBackupRamDiskLocation', settings.ramDiskLocation);
}
