import path from 'node:path';
import { BackupError } from './errors.js';
import { ReturnCode } from './returnCodes.js';
import { assertSafeName } from './names.js';

/** A disk as far as the path rule needs it (the directory's sstDisk entry). */
export interface PoolPathDisk {
  target: string;
  device: string;
  type: string;
  sourceFile: string | undefined;
}

/** The `<vm-type>/<storage-pool>` part of a VM's retain and backup paths. */
export interface PoolPath {
  vmType: string;
  pool: string;
}

/**
 * The original implementation's rule: the path component is the directory
 * of the VM's first disk image below the image root (`dirname(sstSourceFile)`
 * without `/var/virtualization/`), i.e. `<vm-type>/<storage-pool>`; the web
 * UI builds the same from the pool's storage pool. With disks in several
 * storage pools the first disk decides, as in the original (its first disk
 * is the first of the domain; here: the lowest target name among file
 * disks, which is the same for the VMs stoney cloud creates). A first disk
 * outside the image roots (53) or not exactly two directories below one
 * (62) gives no path: refused, never guessed.
 */
export function storagePoolPath(disks: readonly PoolPathDisk[], imageRoots: readonly string[]): PoolPath {
  const files = disks
    .filter((d) => d.device === 'disk' && d.type === 'file' && d.sourceFile !== undefined)
    .sort((a, b) => (a.target < b.target ? -1 : a.target > b.target ? 1 : 0));
  const first = files[0];
  if (!first?.sourceFile) throw new BackupError('the VM has no file disk in the directory: no storage-pool directory for its backups', ReturnCode.noStoragePoolDirectory);
  const source = first.sourceFile;
  if (!path.isAbsolute(source)) throw new BackupError(`disk ${first.target} (${source}) is not an absolute path`, ReturnCode.diskOutsideImageRoots);
  for (const root of imageRoots) {
    const rel = path.relative(path.resolve(root), path.dirname(path.resolve(source)));
    if (rel.startsWith('..') || path.isAbsolute(rel)) continue;
    const parts = rel === '' ? [] : rel.split(path.sep);
    if (parts.length !== 2) {
      throw new BackupError(`disk ${first.target} (${source}) is not at <image root>/<vm-type>/<storage-pool>/<file> below ${root}`, ReturnCode.noStoragePoolDirectory);
    }
    return { vmType: assertSafeName('VM type directory', parts[0]), pool: assertSafeName('storage pool', parts[1]) };
  }
  throw new BackupError(`disk ${first.target} (${source}) is outside the image roots ${imageRoots.join(', ')}`, ReturnCode.diskOutsideImageRoots);
}
