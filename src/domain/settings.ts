import { directoryFromUrl } from './fileUrl.js';
import { BackupError } from './errors.js';
import { ReturnCode } from './returnCodes.js';

/** Raw LDAP attributes as the directory layer hands them over: lower-cased names, string values. */
export type Attributes = Record<string, string[]>;

export interface CronSettings {
  minute: string;
  hour: string;
  day: string;
  month: string;
  dayOfWeek: string;
  active: boolean;
  /** DN of the entry the schedule came from (VM, pool or global ou=backup). */
  sourceDn: string;
}

/**
 * How a running VM is snapshotted. `save`: virsh save, swap the disks, virsh
 * restore (the seed's way; the guest stops for as long as writing its RAM
 * takes). `live`: an external snapshot with memory while the guest runs (it
 * stops only for the final instant), merged back by an active block commit.
 */
export type SnapshotMethod = 'live' | 'save';
export const snapshotMethods: readonly SnapshotMethod[] = ['live', 'save'];

export interface BackupSettings {
  /** DN of the entry the settings came from (VM, pool or global ou=backup). */
  sourceDn: string;
  /** looked up on its own (sstBackupSnapshotMethod), like the exclusion flag */
  snapshotMethod: SnapshotMethod;
  /**
   * sstBackupFullEvery, looked up on its own like the method: every Nth
   * backup of a VM is full, the ones between store only what changed since
   * the previous one (1 = always full).
   */
  fullEvery: number;
  rootDirectory: string;
  retainDirectory: string;
  ramDiskLocation: string | undefined;
  numberOfIterations: number;
  restoreWithoutState: boolean;
  forceStart: boolean;
  /** MiB/s for the block pull; 0 = unlimited. */
  bandwidthMerge: number;
  diskImageFormat: string;
  image: { owner: string; group: string; mode: number };
  directory: { owner: string; group: string; mode: number };
}

export const defaultBackupSettings: Omit<BackupSettings, 'sourceDn'> = {
  snapshotMethod: 'live',
  fullEvery: 7,
  rootDirectory: '/var/backup/virtualization',
  retainDirectory: '/var/virtualization/retain',
  ramDiskLocation: undefined,
  numberOfIterations: 1,
  restoreWithoutState: false,
  forceStart: false,
  bandwidthMerge: 0,
  diskImageFormat: 'qcow2',
  image: { owner: 'root', group: 'vm-storage', mode: 0o660 },
  directory: { owner: 'root', group: 'vm-storage', mode: 0o770 },
};

/** Attributes of sstVirtualizationBackupObjectClass other than the exclusion flag. */
export const backupSettingAttributes = [
  'sstbackuprootdirectory', 'sstbackupretaindirectory', 'sstbackupramdisklocation',
  'sstbackupnumberofiterations', 'sstrestorevmwithoutstate',
  'sstvirtualizationvirtualmachineforcestart', 'sstvirtualizationbandwidthmerge',
  'sstvirtualizationdiskimageformat', 'sstvirtualizationdiskimageowner',
  'sstvirtualizationdiskimagegroup', 'sstvirtualizationdiskimagepermission',
  'sstvirtualizationdiskimagedirectoryowner', 'sstvirtualizationdiskimagedirectorygroup',
  'sstvirtualizationdiskimagedirectorypermission',
] as const;

export const cronAttributes = ['sstcronminute', 'sstcronhour', 'sstcronday', 'sstcronmonth', 'sstcrondayofweek', 'sstcronactive'] as const;

function first(a: Attributes, name: string): string | undefined {
  return a[name]?.[0];
}

export function hasObjectClass(a: Attributes, cls: string): boolean {
  return (a['objectclass'] ?? []).some((c) => c.toLowerCase() === cls.toLowerCase());
}

export function parseBoolean(attribute: string, v: string | undefined, fallback: boolean): boolean {
  if (v === undefined) return fallback;
  const u = v.toUpperCase();
  if (u === 'TRUE') return true;
  if (u === 'FALSE') return false;
  throw new BackupError(`${attribute}: ${JSON.stringify(v)} is not TRUE or FALSE`, ReturnCode.unsupportedConfigurationParameter);
}

function parseInteger(attribute: string, v: string | undefined, fallback: number, min: number): number {
  if (v === undefined) return fallback;
  if (!/^-?\d+$/.test(v.trim()) || Number(v) < min) {
    throw new BackupError(`${attribute}: ${JSON.stringify(v)} is not an integer ≥ ${min}`, ReturnCode.unsupportedConfigurationParameter);
  }
  return Number(v);
}

/**
 * An octal permission from the directory. Only the 0777 bits: the node runs
 * as root, so a setuid, setgid or sticky bit written into the directory would
 * be set by root on files (and directories) that others can write.
 */
export function parseMode(attribute: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  if (!/^0?[0-7]{3,4}$/.test(v.trim())) {
    throw new BackupError(`${attribute}: ${JSON.stringify(v)} is not an octal file mode`, ReturnCode.unsupportedConfigurationParameter);
  }
  const mode = parseInt(v, 8);
  if (mode > 0o777) {
    throw new BackupError(
      `${attribute}: ${JSON.stringify(v)} sets setuid, setgid or sticky bits; only permission bits up to 0777 are allowed`,
      ReturnCode.unsupportedConfigurationParameter,
    );
  }
  return mode;
}

/**
 * The mode of a backup's own files, derived from the configured image mode:
 * never group- or world-writable (the image group must not be able to plant
 * an XML, LDIF or manifest a restore will trust), and a state file (the
 * guest's memory) at most group-readable: 0600, or 0640 when the image mode
 * lets the group read.
 */
export function backupFileMode(kind: 'image' | 'state' | 'xml' | 'ldif' | 'manifest', imageMode: number): number {
  if (kind === 'image') return imageMode & 0o777;
  if (kind === 'state') return 0o600 | (imageMode & 0o040);
  return imageMode & 0o755 & ~0o022;
}

/** True when an ou=backup entry carries backup settings (not only the exclusion flag). */
export function carriesBackupSettings(a: Attributes): boolean {
  return hasObjectClass(a, 'sstVirtualizationBackupObjectClass') && backupSettingAttributes.some((n) => a[n] !== undefined);
}

export function carriesCron(a: Attributes): boolean {
  return hasObjectClass(a, 'sstCronObjectClass') && a['sstcronminute'] !== undefined;
}

/** Settings from one ou=backup entry; missing attributes take the defaults. Throws BackupError on bad values. */
export function backupSettingsFromAttributes(sourceDn: string, a: Attributes): BackupSettings {
  const d = defaultBackupSettings;
  const ram = first(a, 'sstbackupramdisklocation');
  return {
    sourceDn,
    snapshotMethod: d.snapshotMethod,
    fullEvery: d.fullEvery,
    rootDirectory: directoryFromUrl('sstBackupRootDirectory', first(a, 'sstbackuprootdirectory') ?? d.rootDirectory),
    retainDirectory: directoryFromUrl('sstBackupRetainDirectory', first(a, 'sstbackupretaindirectory') ?? d.retainDirectory),
    ramDiskLocation: ram === undefined ? undefined : directoryFromUrl('sstBackupRamDiskLocation', ram),
    numberOfIterations: parseInteger('sstBackupNumberOfIterations', first(a, 'sstbackupnumberofiterations'), d.numberOfIterations, 1),
    restoreWithoutState: parseBoolean('sstRestoreVMWithoutState', first(a, 'sstrestorevmwithoutstate'), d.restoreWithoutState),
    forceStart: parseBoolean('sstVirtualizationVirtualMachineForceStart', first(a, 'sstvirtualizationvirtualmachineforcestart'), d.forceStart),
    bandwidthMerge: parseInteger('sstVirtualizationBandwidthMerge', first(a, 'sstvirtualizationbandwidthmerge'), d.bandwidthMerge, 0),
    diskImageFormat: first(a, 'sstvirtualizationdiskimageformat') ?? d.diskImageFormat,
    image: {
      owner: first(a, 'sstvirtualizationdiskimageowner') ?? d.image.owner,
      group: first(a, 'sstvirtualizationdiskimagegroup') ?? d.image.group,
      mode: parseMode('sstVirtualizationDiskImagePermission', first(a, 'sstvirtualizationdiskimagepermission'), d.image.mode),
    },
    directory: {
      owner: first(a, 'sstvirtualizationdiskimagedirectoryowner') ?? d.directory.owner,
      group: first(a, 'sstvirtualizationdiskimagedirectorygroup') ?? d.directory.group,
      mode: parseMode('sstVirtualizationDiskImageDirectoryPermission', first(a, 'sstvirtualizationdiskimagedirectorypermission'), d.directory.mode),
    },
  };
}

export function parseSnapshotMethod(v: string | undefined): SnapshotMethod {
  if (v === undefined) return defaultBackupSettings.snapshotMethod;
  const m = v.trim().toLowerCase();
  if (!(snapshotMethods as readonly string[]).includes(m)) {
    throw new BackupError(`sstBackupSnapshotMethod: ${JSON.stringify(v)} is not one of ${snapshotMethods.join(', ')}`, ReturnCode.unsupportedConfigurationParameter);
  }
  return m as SnapshotMethod;
}

export function cronFromAttributes(sourceDn: string, a: Attributes): CronSettings {
  const field = (n: string) => first(a, n) ?? '*';
  return {
    sourceDn,
    minute: field('sstcronminute'),
    hour: field('sstcronhour'),
    day: field('sstcronday'),
    month: field('sstcronmonth'),
    dayOfWeek: field('sstcrondayofweek'),
    active: parseBoolean('sstCronActive', first(a, 'sstcronactive'), false),
  };
}

/**
 * The settings lookup of the stoney cloud: the VM's own ou=backup, else its
 * pool's, else the global one; the first level that carries settings is used
 * whole. The exclusion flag, the cron schedule and the snapshot method are
 * looked up the same way but independently, because the seed's exclusion
 * entry carries nothing else (and the method and sstBackupFullEvery live in
 * the project's own auxiliary class, which an original settings entry does
 * not carry).
 */
export interface SettingsLevels {
  vm?: { dn: string; attributes: Attributes };
  pool?: { dn: string; attributes: Attributes };
  global?: { dn: string; attributes: Attributes };
}

export interface EffectiveSettings {
  backup: BackupSettings;
  cron: CronSettings | undefined;
  excluded: boolean;
}

export function resolveSettings(levels: SettingsLevels): EffectiveSettings {
  const ordered = [levels.vm, levels.pool, levels.global].filter((l): l is { dn: string; attributes: Attributes } => l !== undefined);
  const settingsLevel = ordered.find((l) => carriesBackupSettings(l.attributes));
  const cronLevel = ordered.find((l) => carriesCron(l.attributes));
  const exclusionLevel = ordered.find((l) => l.attributes['sstbackupexcludefrombackup'] !== undefined);
  const methodLevel = ordered.find((l) => l.attributes['sstbackupsnapshotmethod'] !== undefined);
  const fullEveryLevel = ordered.find((l) => l.attributes['sstbackupfullevery'] !== undefined);
  const backup = settingsLevel
    ? backupSettingsFromAttributes(settingsLevel.dn, settingsLevel.attributes)
    : { sourceDn: '(defaults)', ...defaultBackupSettings, image: { ...defaultBackupSettings.image }, directory: { ...defaultBackupSettings.directory } };
  backup.snapshotMethod = parseSnapshotMethod(methodLevel?.attributes['sstbackupsnapshotmethod']?.[0]);
  backup.fullEvery = parseInteger('sstBackupFullEvery', fullEveryLevel?.attributes['sstbackupfullevery']?.[0], defaultBackupSettings.fullEvery, 1);
  return {
    backup,
    cron: cronLevel ? cronFromAttributes(cronLevel.dn, cronLevel.attributes) : undefined,
    excluded: exclusionLevel
      ? parseBoolean('sstBackupExcludeFromBackup', exclusionLevel.attributes['sstbackupexcludefrombackup']?.[0], false)
      : false,
  };
}
