import { lstat } from 'node:fs/promises';
import { BackupLayout, vmTypeDirectory } from '../domain/layout.js';
import { isSafeName } from '../domain/names.js';
import { storagePoolPath, type PoolPath } from '../domain/storagePoolPath.js';
import type { BackupSettings } from '../domain/settings.js';
import type { VmEntry } from '../directory/types.js';

export interface LocatedLayout {
  layout: BackupLayout;
  /** the leaf's files were found under the VM-pool path of earlier stoney-backup versions */
  legacy: boolean;
}

/**
 * Earlier versions of stoney-backup wrote below `<vm-type>/<sstVirtualMachinePool>`
 * instead of the storage-pool directory; their backups must stay listable,
 * restorable and deletable.
 */
export function legacyPoolPath(vm: VmEntry): PoolPath | undefined {
  if (vm.type === '') return undefined; // no type: no legacy path to look in
  const vmType = vmTypeDirectory(vm.type);
  return isSafeName(vmType) && isSafeName(vm.pool) ? { vmType, pool: vm.pool } : undefined;
}

async function present(p: string): Promise<boolean> {
  // lstat: a symlink counts as present here; the steps refuse it (61) where they touch it.
  return lstat(p).then(() => true, () => false);
}

/**
 * Where one leaf's files are: the storage-pool path (the original's rule,
 * domain/storagePoolPath.ts) unless nothing of this leaf is there (neither
 * its backup nor its retain directory) and something is under the legacy
 * VM-pool path — then that one. A leaf with files nowhere (a new backup)
 * gets the storage-pool path; when that cannot be derived, its error stands.
 */
export async function locateLayout(vm: VmEntry, leaf: string, settings: Pick<BackupSettings, 'rootDirectory' | 'retainDirectory'>, imageRoots: readonly string[]): Promise<LocatedLayout> {
  const make = (p: PoolPath) => new BackupLayout({ rootDirectory: settings.rootDirectory, retainDirectory: settings.retainDirectory, vmType: p.vmType, pool: p.pool, vm: vm.name, leaf });
  let primary: BackupLayout | undefined;
  let primaryError: unknown;
  try {
    primary = make(storagePoolPath(vm.disks, imageRoots));
    if ((await present(primary.backupDir)) || (await present(primary.retainDir))) return { layout: primary, legacy: false };
  } catch (err) {
    primaryError = err;
  }
  const old = legacyPoolPath(vm);
  if (old && (!primary || old.vmType !== primary.vmType || old.pool !== primary.pool)) {
    const legacy = make(old);
    if ((await present(legacy.backupDir)) || (await present(legacy.retainDir))) return { layout: legacy, legacy: true };
  }
  if (primary) return { layout: primary, legacy: false };
  throw primaryError;
}
