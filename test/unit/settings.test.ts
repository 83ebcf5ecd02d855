import { describe, expect, it } from 'vitest';
import { returnCodeOf } from '../helpers/returnCodeOf.js';
import {
  backupFileMode,
  backupSettingsFromAttributes,
  cronFromAttributes,
  defaultBackupSettings,
  resolveSettings,
  type Attributes,
  type BackupSettings,
} from '../../src/domain/settings.js';

const base = 'ou=virtualization,ou=services,o=stepping-stone,c=ch';
const vmDn = `ou=backup,sstVirtualMachine=kvm-005,ou=virtual machines,${base}`;
const poolDn = `ou=backup,sstVirtualMachinePool=0f83f084-8080-413e-b558-b678e504836e,ou=virtual machine pools,${base}`;
const globalDn = `ou=backup,ou=configuration,${base}`;

/** The seed's Step 00 entry, attribute names lower-cased as the directory layer hands them over. */
const seedVmEntry: Attributes = {
  objectclass: ['top', 'organizationalUnit', 'sstVirtualizationBackupObjectClass', 'sstCronObjectClass'],
  ou: ['backup'],
  description: ['This sub tree contains the backup plan for the virtual machine kvm-005.'],
  sstcronminute: ['0'],
  sstcronhour: ['3'],
  sstcronday: ['*'],
  sstcronmonth: ['*'],
  sstcrondayofweek: ['*'],
  sstcronactive: ['TRUE'],
  sstbackuprootdirectory: ['file:///var/backup/virtualization'],
  sstbackupretaindirectory: ['file:///var/virtualization/retain'],
  sstbackupramdisklocation: ['file:///mnt/ramdisk-test'],
  sstvirtualizationdiskimageformat: ['qcow2'],
  sstvirtualizationdiskimageowner: ['root'],
  sstvirtualizationdiskimagegroup: ['vm-storage'],
  sstvirtualizationdiskimagepermission: ['0660'],
  sstbackupnumberofiterations: ['1'],
  sstvirtualizationvirtualmachineforcestart: ['FALSE'],
  sstvirtualizationbandwidthmerge: ['0'],
};

/** The seed's "How to exclude a machine from the backup" entry. */
const seedExclusionEntry: Attributes = {
  objectclass: ['top', 'organizationalUnit', 'sstVirtualizationBackupObjectClass'],
  ou: ['backup'],
  sstbackupexcludefrombackup: ['TRUE'],
};

const poolEntry: Attributes = {
  objectclass: ['top', 'organizationalUnit', 'sstVirtualizationBackupObjectClass', 'sstCronObjectClass'],
  ou: ['backup'],
  sstcronminute: ['15'],
  sstcronhour: ['1'],
  sstcronday: ['*'],
  sstcronmonth: ['*'],
  sstcrondayofweek: ['1-5'],
  sstcronactive: ['TRUE'],
  sstbackuprootdirectory: ['file:///srv/pool-backup'],
  sstbackupnumberofiterations: ['7'],
  sstvirtualizationbandwidthmerge: ['50'],
  sstrestorevmwithoutstate: ['TRUE'],
};

const globalEntry: Attributes = {
  objectclass: ['top', 'organizationalUnit', 'sstVirtualizationBackupObjectClass', 'sstCronObjectClass'],
  ou: ['backup'],
  sstcronminute: ['0'],
  sstcronhour: ['4'],
  sstcronday: ['*'],
  sstcronmonth: ['*'],
  sstcrondayofweek: ['*'],
  sstcronactive: ['FALSE'],
  sstbackupnumberofiterations: ['3'],
};

const codeOf = returnCodeOf;

describe('resolveSettings', () => {
  it('reads the seed entry completely', () => {
    const s = resolveSettings({ vm: { dn: vmDn, attributes: seedVmEntry } });
    const expected: BackupSettings = {
      sourceDn: vmDn,
      snapshotMethod: 'live',
      fullEvery: 7,
      rootDirectory: '/var/backup/virtualization',
      retainDirectory: '/var/virtualization/retain',
      ramDiskLocation: '/mnt/ramdisk-test',
      numberOfIterations: 1,
      restoreWithoutState: false,
      forceStart: false,
      bandwidthMerge: 0,
      diskImageFormat: 'qcow2',
      image: { owner: 'root', group: 'vm-storage', mode: 0o660 },
      directory: { owner: 'root', group: 'vm-storage', mode: 0o770 },
    };
    expect(s.backup).toEqual(expected);
    expect(s.cron).toEqual({ sourceDn: vmDn, minute: '0', hour: '3', day: '*', month: '*', dayOfWeek: '*', active: true });
    expect(s.excluded).toBe(false);
  });

  it('uses the VM level whole when it carries settings: nothing is merged from the pool', () => {
    const s = resolveSettings({
      vm: { dn: vmDn, attributes: seedVmEntry },
      pool: { dn: poolDn, attributes: poolEntry },
      global: { dn: globalDn, attributes: globalEntry },
    });
    expect(s.backup.sourceDn).toBe(vmDn);
    expect(s.backup.rootDirectory).toBe('/var/backup/virtualization');
    expect(s.backup.numberOfIterations).toBe(1);
    // Not set on the VM level: the default, not the pool's 50 / TRUE.
    expect(s.backup.bandwidthMerge).toBe(0);
    expect(s.backup.restoreWithoutState).toBe(false);
    expect(s.cron?.sourceDn).toBe(vmDn);
    expect(s.cron?.hour).toBe('3');
  });

  it('falls back to the pool, then the global level', () => {
    const fromPool = resolveSettings({ pool: { dn: poolDn, attributes: poolEntry }, global: { dn: globalDn, attributes: globalEntry } });
    expect(fromPool.backup.sourceDn).toBe(poolDn);
    expect(fromPool.backup.rootDirectory).toBe('/srv/pool-backup');
    expect(fromPool.backup.retainDirectory).toBe('/var/virtualization/retain');
    expect(fromPool.backup.numberOfIterations).toBe(7);
    expect(fromPool.backup.bandwidthMerge).toBe(50);
    expect(fromPool.backup.restoreWithoutState).toBe(true);
    expect(fromPool.cron).toEqual({ sourceDn: poolDn, minute: '15', hour: '1', day: '*', month: '*', dayOfWeek: '1-5', active: true });

    const fromGlobal = resolveSettings({ global: { dn: globalDn, attributes: globalEntry } });
    expect(fromGlobal.backup.sourceDn).toBe(globalDn);
    expect(fromGlobal.backup.numberOfIterations).toBe(3);
    expect(fromGlobal.cron).toEqual({ sourceDn: globalDn, minute: '0', hour: '4', day: '*', month: '*', dayOfWeek: '*', active: false });
  });

  it('the seed’s exclusion-only VM entry does not hide pool settings, but excludes the VM', () => {
    const s = resolveSettings({
      vm: { dn: vmDn, attributes: seedExclusionEntry },
      pool: { dn: poolDn, attributes: poolEntry },
      global: { dn: globalDn, attributes: globalEntry },
    });
    expect(s.excluded).toBe(true);
    expect(s.backup.sourceDn).toBe(poolDn);
    expect(s.backup.numberOfIterations).toBe(7);
    expect(s.cron?.sourceDn).toBe(poolDn);
  });

  it('the exclusion flag comes from the first level that has it', () => {
    const poolExcluded = { ...poolEntry, sstbackupexcludefrombackup: ['TRUE'] };
    expect(resolveSettings({ pool: { dn: poolDn, attributes: poolExcluded } }).excluded).toBe(true);
    const vmIncluded = { ...seedVmEntry, sstbackupexcludefrombackup: ['FALSE'] };
    expect(resolveSettings({ vm: { dn: vmDn, attributes: vmIncluded }, pool: { dn: poolDn, attributes: poolExcluded } }).excluded).toBe(false);
    expect(resolveSettings({ vm: { dn: vmDn, attributes: { ...seedExclusionEntry, sstbackupexcludefrombackup: ['true'] } } }).excluded).toBe(true);
  });

  it('takes the cron schedule from the first level carrying sstCronObjectClass, independently of the settings', () => {
    const vmSettingsNoCron: Attributes = {
      objectclass: ['top', 'organizationalUnit', 'sstVirtualizationBackupObjectClass'],
      sstbackupnumberofiterations: ['2'],
    };
    const s = resolveSettings({
      vm: { dn: vmDn, attributes: vmSettingsNoCron },
      pool: { dn: poolDn, attributes: poolEntry },
      global: { dn: globalDn, attributes: globalEntry },
    });
    expect(s.backup.sourceDn).toBe(vmDn);
    expect(s.backup.numberOfIterations).toBe(2);
    expect(s.cron?.sourceDn).toBe(poolDn);
    expect(s.cron?.minute).toBe('15');

    const vmCronOnly: Attributes = {
      objectclass: ['top', 'organizationalUnit', 'sstCronObjectClass'],
      sstcronminute: ['30'],
      sstcronhour: ['23'],
      sstcronday: ['1'],
      sstcronmonth: ['*'],
      sstcrondayofweek: ['*'],
      sstcronactive: ['TRUE'],
    };
    const t = resolveSettings({ vm: { dn: vmDn, attributes: vmCronOnly }, global: { dn: globalDn, attributes: globalEntry } });
    expect(t.cron).toEqual({ sourceDn: vmDn, minute: '30', hour: '23', day: '1', month: '*', dayOfWeek: '*', active: true });
    expect(t.backup.sourceDn).toBe(globalDn);
  });

  it('ignores cron attributes without sstCronObjectClass and settings without sstVirtualizationBackupObjectClass', () => {
    const noClasses: Attributes = { objectclass: ['top', 'organizationalUnit'], sstcronminute: ['1'], sstbackupnumberofiterations: ['9'] };
    const s = resolveSettings({ vm: { dn: vmDn, attributes: noClasses }, global: { dn: globalDn, attributes: globalEntry } });
    expect(s.backup.sourceDn).toBe(globalDn);
    expect(s.cron?.sourceDn).toBe(globalDn);
  });

  it('matches object classes case-insensitively', () => {
    const lower: Attributes = {
      objectclass: ['top', 'organizationalunit', 'sstvirtualizationbackupobjectclass', 'SSTCRONOBJECTCLASS'],
      sstbackupnumberofiterations: ['4'],
      sstcronminute: ['5'],
      sstcronhour: ['6'],
      sstcronday: ['*'],
      sstcronmonth: ['*'],
      sstcrondayofweek: ['*'],
      sstcronactive: ['TRUE'],
    };
    const s = resolveSettings({ vm: { dn: vmDn, attributes: lower } });
    expect(s.backup.numberOfIterations).toBe(4);
    expect(s.cron?.minute).toBe('5');
  });

  it('uses the defaults when no level carries settings', () => {
    const s = resolveSettings({});
    expect(s.backup).toEqual({
      sourceDn: '(defaults)',
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
    });
    expect(s.cron).toBeUndefined();
    expect(s.excluded).toBe(false);
    expect(resolveSettings({ vm: { dn: vmDn, attributes: seedExclusionEntry } }).backup.sourceDn).toBe('(defaults)');
  });

  it('fills attributes missing on the chosen level with the defaults', () => {
    const partial: Attributes = { objectclass: ['sstVirtualizationBackupObjectClass'], sstvirtualizationdiskimagegroup: ['kvm'] };
    const s = backupSettingsFromAttributes(poolDn, partial);
    expect(s).toEqual({ ...defaultBackupSettings, sourceDn: poolDn, image: { owner: 'root', group: 'kvm', mode: 0o660 } });
  });
});

describe('backupSettingsFromAttributes values', () => {
  const withAttr = (name: string, value: string) => () =>
    backupSettingsFromAttributes(vmDn, { objectclass: ['sstVirtualizationBackupObjectClass'], [name]: [value] });

  it('reads permissions as octal: "0660" → 0o660', () => {
    expect(withAttr('sstvirtualizationdiskimagepermission', '0660')().image.mode).toBe(0o660);
    expect(withAttr('sstvirtualizationdiskimagepermission', '0660')().image.mode).toBe(432);
    expect(withAttr('sstvirtualizationdiskimagepermission', '660')().image.mode).toBe(0o660);
    expect(withAttr('sstvirtualizationdiskimagepermission', '0640')().image.mode).toBe(0o640);
    expect(withAttr('sstvirtualizationdiskimagedirectorypermission', '0770')().directory.mode).toBe(0o770);
  });

  it('reads booleans TRUE/FALSE in any case', () => {
    expect(withAttr('sstvirtualizationvirtualmachineforcestart', 'TRUE')().forceStart).toBe(true);
    expect(withAttr('sstvirtualizationvirtualmachineforcestart', 'true')().forceStart).toBe(true);
    expect(withAttr('sstrestorevmwithoutstate', 'False')().restoreWithoutState).toBe(false);
  });

  it('reads integers', () => {
    expect(withAttr('sstbackupnumberofiterations', '14')().numberOfIterations).toBe(14);
    expect(withAttr('sstvirtualizationbandwidthmerge', '0')().bandwidthMerge).toBe(0);
    expect(withAttr('sstvirtualizationbandwidthmerge', '120')().bandwidthMerge).toBe(120);
  });

  it('rejects bad booleans, integers and modes with code 39', () => {
    for (const [name, value] of [
      ['sstrestorevmwithoutstate', 'yes'],
      ['sstrestorevmwithoutstate', '1'],
      ['sstvirtualizationvirtualmachineforcestart', ''],
      ['sstbackupnumberofiterations', 'two'],
      ['sstbackupnumberofiterations', '0'],
      ['sstbackupnumberofiterations', '-1'],
      ['sstbackupnumberofiterations', '1.5'],
      ['sstbackupnumberofiterations', ''],
      ['sstvirtualizationbandwidthmerge', '-5'],
      ['sstvirtualizationbandwidthmerge', '10MB'],
      ['sstvirtualizationdiskimagepermission', '0999'],
      // root would set these bits on files and directories others can write
      ['sstvirtualizationdiskimagepermission', '4755'],
      ['sstvirtualizationdiskimagepermission', '2660'],
      ['sstvirtualizationdiskimagedirectorypermission', '2770'],
      ['sstvirtualizationdiskimagedirectorypermission', '1777'],
      ['sstvirtualizationdiskimagedirectorypermission', '07777'],
      ['sstvirtualizationdiskimagepermission', 'rw-rw----'],
      ['sstvirtualizationdiskimagepermission', '66'],
      ['sstvirtualizationdiskimagedirectorypermission', '0o770'],
      ['sstbackuprootdirectory', 'not a url'],
    ] as const) {
      expect(codeOf(withAttr(name, value)), `${name}=${JSON.stringify(value)}`).toBe(39);
    }
  });

  it('says why a mode above 0777 is refused', () => {
    expect(withAttr('sstvirtualizationdiskimagepermission', '4755')).toThrow(
      'sstVirtualizationDiskImagePermission: "4755" sets setuid, setgid or sticky bits; only permission bits up to 0777 are allowed',
    );
  });

  it('derives backup file modes that the image group can never write', () => {
    for (const image of [0o660, 0o666, 0o640, 0o600, 0o777]) {
      for (const kind of ['state', 'xml', 'ldif', 'manifest'] as const) expect(backupFileMode(kind, image) & 0o022, `${kind} ${image.toString(8)}`).toBe(0);
      expect(backupFileMode('state', image) & 0o007).toBe(0);
    }
    expect(backupFileMode('state', 0o660)).toBe(0o640);
    expect(backupFileMode('state', 0o600)).toBe(0o600);
    expect(backupFileMode('xml', 0o660)).toBe(0o640);
    expect(backupFileMode('manifest', 0o664)).toBe(0o644);
    expect(backupFileMode('image', 0o660)).toBe(0o660);
  });

  it('names the attribute and value in the message', () => {
    let message = '';
    try {
      withAttr('sstbackupnumberofiterations', 'two')();
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toBe('sstBackupNumberOfIterations: "two" is not an integer ≥ 1');
  });

  it('rejects a non-file backup root with code 35', () => {
    expect(codeOf(withAttr('sstbackuprootdirectory', 'ftp://backup/x'))).toBe(35);
  });

  it('rejects a bad exclusion flag or cron activity flag with code 39', () => {
    expect(codeOf(() => resolveSettings({ vm: { dn: vmDn, attributes: { ...seedExclusionEntry, sstbackupexcludefrombackup: ['yes'] } } }))).toBe(39);
    expect(codeOf(() => cronFromAttributes(vmDn, { ...seedVmEntry, sstcronactive: ['on'] }))).toBe(39);
  });
});

describe('sstBackupSnapshotMethod', () => {
  const level = (dn: string, attributes: Record<string, string[]>) => ({ dn, attributes });
  const settingsClass = { objectclass: ['top', 'organizationalUnit', 'sstVirtualizationBackupObjectClass'], sstbackupnumberofiterations: ['3'] };

  it('defaults to live', () => {
    expect(resolveSettings({}).backup.snapshotMethod).toBe('live');
    expect(resolveSettings({ global: level('g', settingsClass) }).backup.snapshotMethod).toBe('live');
  });

  it('is looked up on its own, VM before pool before global, whatever level carries the other settings', () => {
    const method = (m: string) => ({ objectclass: ['top', 'organizationalUnit', 'sstBackupSettingsExtension'], sstbackupsnapshotmethod: [m] });
    // The pool sets the method only; the global entry carries the settings: both apply.
    const s = resolveSettings({ pool: level('p', method('save')), global: level('g', settingsClass) });
    expect({ method: s.backup.snapshotMethod, from: s.backup.sourceDn, iterations: s.backup.numberOfIterations }).toEqual({ method: 'save', from: 'g', iterations: 3 });
    expect(resolveSettings({ vm: level('v', method('LIVE')), pool: level('p', method('save')) }).backup.snapshotMethod).toBe('live');
    expect(resolveSettings({ vm: level('v', settingsClass), global: level('g', method('save')) }).backup.snapshotMethod).toBe('save');
  });

  it('refuses an unknown method with code 39', () => {
    const bad = { objectclass: ['sstBackupSettingsExtension'], sstbackupsnapshotmethod: ['suspend'] };
    expect(() => resolveSettings({ vm: level('v', bad) })).toThrow(expect.objectContaining({ code: 39, message: expect.stringMatching(/sstBackupSnapshotMethod.*"suspend"/) }));
  });
});

describe('sstBackupFullEvery', () => {
  const level = (dn: string, attributes: Record<string, string[]>) => ({ dn, attributes });
  const settingsClass = { objectclass: ['top', 'organizationalUnit', 'sstVirtualizationBackupObjectClass'], sstbackupnumberofiterations: ['3'] };
  const every = (n: string) => ({ objectclass: ['sstBackupSettingsExtension'], sstbackupfullevery: [n] });

  it('defaults to 7 and is looked up on its own, VM before pool before global', () => {
    expect(resolveSettings({}).backup.fullEvery).toBe(7);
    expect(resolveSettings({ vm: level('v', settingsClass) }).backup.fullEvery).toBe(7);
    const s = resolveSettings({ vm: level('v', settingsClass), pool: level('p', every('3')), global: level('g', every('1')) });
    expect({ every: s.backup.fullEvery, from: s.backup.sourceDn }).toEqual({ every: 3, from: 'v' });
    expect(resolveSettings({ vm: level('v', every('1')), pool: level('p', every('3')) }).backup.fullEvery).toBe(1);
  });

  it('refuses 0, negatives and non-integers with code 39', () => {
    for (const bad of ['0', '-2', '2.5', 'weekly']) {
      expect(() => resolveSettings({ vm: level('v', every(bad)) })).toThrow(expect.objectContaining({ code: 39, message: expect.stringMatching(/sstBackupFullEvery/) }));
    }
  });
});
