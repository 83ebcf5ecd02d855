import path from 'node:path';
import { assertSafeName } from './names.js';
import { isLeafName } from './leafName.js';
import { BackupError } from './errors.js';
import { ReturnCode } from './returnCodes.js';

/**
 * Where the files of one backup live, in the original stoney cloud layout:
 *   retain: <retain>/<vm-type>/<pool>/<vm>/<leaf>/<file>
 *   backup: <root>/<vm-type>/<pool>/<vm>/<leaf>/<file>.<leaf>
 */
export interface BackupLayoutInput {
  rootDirectory: string;
  retainDirectory: string;
  vmType: string;
  pool: string;
  vm: string;
  leaf: string;
}

/**
 * sstVirtualMachineType → directory name under the image, retain and backup
 * roots. A VM without a type is refused (63), never filed under `vm-/`.
 */
export function vmTypeDirectory(type: string): string {
  if (type === '') throw new BackupError('the VM has no sstVirtualMachineType', ReturnCode.missingVirtualMachineType);
  const known = new Map([['persistent', 'vm-persistent'], ['dynamic', 'vm-dynamic'], ['template', 'vm-templates'], ['templates', 'vm-templates']]);
  return known.get(type) ?? (type.startsWith('vm-') ? type : `vm-${type}`);
}

export const NO_STATE_MARKER = 'Machine is not runnung, no state file';
export const MANIFEST_NAME = 'manifest.json';

/**
 * The overlay a live snapshot puts under a running disk, in the backup's
 * retain directory: `<image file name>.overlay`. Never part of a backup.
 */
export const LIVE_OVERLAY_SUFFIX = '.overlay';
export function liveOverlayName(imageFileName: string): string {
  return `${imageFileName}${LIVE_OVERLAY_SUFFIX}`;
}

/**
 * A live backup's disk image is copied into the backup directory during the
 * merge (before the commit changes the original); this record in retain,
 * `<image file name>.kept.json` = { name, size, sha256PerMiB }, says the copy is
 * complete and lets retain list it in the manifest without reading it again.
 */
export const KEPT_RECORD_SUFFIX = '.kept.json';
/** In a live backup's retain directory: a frozen image could not be kept, so the backup has failed (keepFailure.ts). */
export const KEEP_FAILED_RECORD = 'keep-failed.json';
/** In retain while the merge has a shut-off VM started paused: only then may recovery destroy a paused VM. */
export const STARTED_PAUSED_MARKER = 'started-paused-for-merge';

/**
 * Rotation of incremental chains. `.rotation-remove` in a backup directory:
 * the iteration is being removed (never restorable or built on again; its
 * images may already carry a later iteration's clusters). `fold.json` in a
 * kept iteration: one of its images is absorbing its backing image; the
 * journal lets any later run finish the fold.
 */
export const ROTATION_MARKER = '.rotation-remove';
export const FOLD_JOURNAL = 'fold.json';

export class BackupLayout {
  readonly vmType: string;
  readonly pool: string;
  readonly vm: string;
  readonly leaf: string;
  constructor(private readonly input: BackupLayoutInput) {
    this.vmType = assertSafeName('VM type', input.vmType);
    this.pool = assertSafeName('storage pool', input.pool);
    this.vm = assertSafeName('VM name', input.vm);
    if (!isLeafName(input.leaf)) throw new BackupError(`leaf ${JSON.stringify(input.leaf)} is not a YYYYMMDDTHHMMSSZ name`, ReturnCode.unsafeName);
    this.leaf = input.leaf;
  }
  /** <retain>/<vm-type>/<pool>/<vm>/<leaf> */
  get retainDir(): string {
    return path.join(this.input.retainDirectory, this.vmType, this.pool, this.vm, this.leaf);
  }
  /** <root>/<vm-type>/<pool>/<vm> — one subdirectory per backup. */
  get vmBackupDir(): string {
    return path.join(this.input.rootDirectory, this.vmType, this.pool, this.vm);
  }
  /** <root>/<vm-type>/<pool>/<vm>/<leaf> */
  get backupDir(): string {
    return path.join(this.vmBackupDir, this.leaf);
  }
  get stateFileName(): string {
    return `${this.vm}.state`;
  }
  get xmlFileName(): string {
    return `${this.vm}.xml`;
  }
  get ldifFileName(): string {
    return `${this.vm}.ldif`;
  }
  retainPath(fileName: string): string {
    return path.join(this.retainDir, assertSafeName('file name', fileName));
  }
  /** Final name of a retained file in the backup directory: `<file>.<leaf>`. */
  backupPath(fileName: string): string {
    return path.join(this.backupDir, `${assertSafeName('file name', fileName)}.${this.leaf}`);
  }
  /** Record of a disk image already copied into the backup directory (live method). */
  keptRecordPath(imageFileName: string): string {
    return this.retainPath(`${imageFileName}${KEPT_RECORD_SUFFIX}`);
  }
  get manifestPath(): string {
    return path.join(this.backupDir, MANIFEST_NAME);
  }
}
