import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client } from 'ldapts';
import { startSlapd, ldapAdd, ldapModify, ldapSearch, LDIF_DIR, type PrivateSlapd } from '../helpers/slapd.js';
import { connectDirectory } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { BackupError } from '../../src/domain/errors.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';
import { isLeafName } from '../../src/domain/leafName.js';
import { devicesEntryLines, diskEntryLines, ldifText, vmEntryLines } from '../helpers/directoryEntries.js';

const SERVICE = 'ou=virtualization,ou=services,o=stepping-stone,c=ch';
const VMS = `ou=virtual machines,${SERVICE}`;
const POOL = '0f83f084-8080-413e-b558-b678e504836e';

let slapd: PrivateSlapd;
let dir: LdapBackupDirectory;

function connect(s: PrivateSlapd): Promise<LdapBackupDirectory> {
  return connectDirectory({ url: s.url, bindDn: s.bindDn, passwordFile: s.passwordFile, baseDn: s.baseDn });
}

/** Parse `ldapsearch -LLL -o ldif-wrap=no` output of one entry into name → values (base64 decoded, names lower-cased). */
function parseLdif(text: string): Map<string, Record<string, string[]>> {
  const out = new Map<string, Record<string, string[]>>();
  for (const block of text.split(/\n\s*\n/)) {
    let dn: string | undefined;
    const attrs: Record<string, string[]> = {};
    for (const line of block.split('\n')) {
      const m = /^([^:#\s]+)(::?) ?(.*)$/.exec(line);
      if (!m) continue;
      const [, name = '', sep, raw = ''] = m;
      const value = sep === '::' ? Buffer.from(raw, 'base64').toString('utf8') : raw;
      if (name.toLowerCase() === 'dn') dn = value;
      else (attrs[name.toLowerCase()] ??= []).push(value);
    }
    if (dn !== undefined) out.set(dn.toLowerCase(), attrs);
  }
  return out;
}

async function rawLeaf(dn: string): Promise<Record<string, string[]>> {
  const text = await ldapSearch(slapd, dn, '(objectClass=*)', ['*', 'entryCSN', 'modifyTimestamp'], 'base');
  const entry = [...parseLdif(text).values()][0];
  if (!entry) throw new Error(`no entry ${dn}`);
  return entry;
}

beforeAll(async () => {
  slapd = await startSlapd({ ldifFiles: [path.join(LDIF_DIR, 'example-exclude.ldif')] });
  dir = await connect(slapd);
});

afterAll(async () => {
  await dir?.close();
  await slapd?.stop();
});

describe('schema and sample tree', () => {
  it('loads the stoney-backup schema with the original names and OIDs', async () => {
    const client = new Client({ url: slapd.url });
    try {
      const { searchEntries } = await client.search('cn=Subschema', { scope: 'base', filter: '(objectClass=*)', attributes: ['attributeTypes', 'objectClasses'] });
      const types = ([] as string[]).concat(searchEntries[0]?.['attributeTypes'] as string[]);
      const classes = ([] as string[]).concat(searchEntries[0]?.['objectClasses'] as string[]);
      const oid = (list: string[], name: string) => list.find((t) => t.includes(`NAME '${name}'`))?.match(/^\(\s*([\d.]+)/)?.[1];
      expect(oid(types, 'sstProvisioningMode')).toBe('1.3.6.1.4.1.22621.1.1.16');
      expect(oid(types, 'sstProvisioningExecutionTime')).toBe('1.3.6.1.4.1.22621.1.1.196');
      expect(oid(types, 'sstBackupExcludeFromBackup')).toBe('1.3.6.1.4.1.22621.1.1.194');
      expect(oid(types, 'sstVirtualizationDiskImageDirectoryPermission')).toBe('1.3.6.1.4.1.22621.1.1.216');
      expect(oid(types, 'sstNode')).toBe('1.3.6.1.4.1.22621.1.1.68');
      expect(oid(types, 'sstCronActive')).toBe('1.3.6.1.4.1.22621.1.1.189');
      for (const c of ['sstProvisioning', 'sstVirtualizationBackupObjectClass', 'sstCronObjectClass', 'sstVirtualizationVirtualMachine', 'sstVirtualizationVirtualMachineDisk']) {
        expect(oid(classes, c), c).toMatch(/^1\.3\.6\.1\.4\.1\.22621\.1\.2\.\d+$/);
      }
    } finally {
      await client.unbind();
    }
  });

  it('holds the sample tree: two VMs with their disks', async () => {
    const vms = await dir.listVms();
    expect(vms.map((v) => v.name)).toEqual(['kvm-001', 'kvm-002']);
    const vm = vms[0]!;
    expect(vm).toMatchObject({ node: 'node-01.example.com', pool: POOL, type: 'persistent' });
    expect(vm.disks).toEqual([
      expect.objectContaining({
        target: 'vda', device: 'disk', type: 'file', driverType: 'qcow2',
        sourceFile: '/var/virtualization/vm-persistent/f9dc3c13-5e3a-4b1c-9d2e-7a6b5c4d3e21/6a1b3c5e-0001-4e1f-9a51-3f0c2d7e8a01.qcow2',
      }),
    ]);
    expect(vm.attributes['sstvirtualmachine']).toEqual(['kvm-001']);
    expect(await dir.getVm('kvm-002')).toMatchObject({ name: 'kvm-002', disks: [expect.objectContaining({ target: 'vda' })] });
    expect(await dir.getVm('kvm-404')).toBeUndefined();
  });

  it('lists VMs by node, matching the node name case-insensitively', async () => {
    expect((await dir.listVms({ node: 'node-01.example.com' })).map((v) => v.name)).toEqual(['kvm-001', 'kvm-002']);
    expect(await dir.listVms({ node: 'node-02.example.com' })).toEqual([]);
    const kvm3 = `sstVirtualMachine=kvm-003,${VMS}`;
    await ldapAdd(slapd, ldifText(
      vmEntryLines(kvm3, { name: 'kvm-003', node: 'node-02.example.com', pool: '11111111-2222-3333-4444-555555555555' }),
      devicesEntryLines(kvm3),
      diskEntryLines(kvm3, { target: 'vdb', sourceFile: '/var/virtualization/vm-persistent/x/b.qcow2' }),
      diskEntryLines(kvm3, { target: 'vda', sourceFile: '/var/virtualization/vm-persistent/x/a.qcow2' }),
    ));
    const onNode2 = await dir.listVms({ node: 'NODE-02.Example.com' });
    expect(onNode2.map((v) => v.name)).toEqual(['kvm-003']);
    expect(onNode2[0]!.disks.map((d) => d.target)).toEqual(['vda', 'vdb']);
    expect((await dir.listVms()).map((v) => v.name)).toEqual(['kvm-001', 'kvm-002', 'kvm-003']);
  });
});

describe('settings lookup VM → pool → global', () => {
  it('uses the pool settings whole for kvm-001, the global schedule, and kvm-002 is excluded (seed entry)', async () => {
    const s1 = await dir.effectiveSettings((await dir.getVm('kvm-001'))!);
    expect(s1.backup.sourceDn.toLowerCase()).toBe(`ou=backup,sstvirtualmachinepool=${POOL},ou=virtual machine pools,${SERVICE}`.toLowerCase());
    expect(s1.backup).toMatchObject({ numberOfIterations: 3, ramDiskLocation: undefined, forceStart: true, bandwidthMerge: 50, rootDirectory: '/var/backup/virtualization' });
    expect(s1.cron).toMatchObject({ minute: '0', hour: '3', day: '*', month: '*', dayOfWeek: '*', active: true });
    expect(s1.cron?.sourceDn.toLowerCase()).toBe(`ou=backup,ou=configuration,${SERVICE}`.toLowerCase());
    expect(s1.excluded).toBe(false);

    const s2 = await dir.effectiveSettings((await dir.getVm('kvm-002'))!);
    expect(s2.excluded).toBe(true);
    // The exclusion entry carries no settings: those still come from the pool.
    expect(s2.backup.numberOfIterations).toBe(3);
  });

  it('falls back to the global entry for a pool without settings', async () => {
    const s3 = await dir.effectiveSettings((await dir.getVm('kvm-003'))!);
    expect(s3.backup.sourceDn.toLowerCase()).toBe(`ou=backup,ou=configuration,${SERVICE}`.toLowerCase());
    expect(s3.backup).toMatchObject({ numberOfIterations: 1, ramDiskLocation: '/mnt/ramdisk-test', forceStart: false, bandwidthMerge: 0 });
  });

  it("uses the VM's own settings whole when its ou=backup carries them", async () => {
    await ldapAdd(slapd, [
      `dn: ou=backup,sstVirtualMachine=kvm-003,${VMS}`, 'objectClass: organizationalUnit', 'objectClass: sstVirtualizationBackupObjectClass',
      'objectClass: sstCronObjectClass', 'ou: backup', 'sstBackupNumberOfIterations: 7',
      'sstCronMinute: 30', 'sstCronHour: 1', 'sstCronDay: *', 'sstCronMonth: *', 'sstCronDayOfWeek: 1-5', 'sstCronActive: FALSE', '',
    ].join('\n'));
    const s = await dir.effectiveSettings((await dir.getVm('kvm-003'))!);
    expect(s.backup.sourceDn.toLowerCase()).toBe(`ou=backup,sstvirtualmachine=kvm-003,${VMS}`.toLowerCase());
    // used whole: nothing taken over from the global entry
    expect(s.backup).toMatchObject({ numberOfIterations: 7, ramDiskLocation: undefined, rootDirectory: '/var/backup/virtualization' });
    expect(s.cron).toMatchObject({ minute: '30', hour: '1', dayOfWeek: '1-5', active: false });
  });

  it('setExcluded sets and clears the flag on the VM entry', async () => {
    const vm = (await dir.getVm('kvm-001'))!;
    await dir.setExcluded('kvm-001', true);
    expect((await dir.effectiveSettings(vm)).excluded).toBe(true);
    const raw = await rawLeaf(`ou=backup,sstVirtualMachine=kvm-001,${VMS}`);
    expect(raw['objectclass']).toContain('sstVirtualizationBackupObjectClass');
    expect(raw['sstbackupexcludefrombackup']).toEqual(['TRUE']);
    await dir.setExcluded('kvm-001', false);
    expect((await dir.effectiveSettings(vm)).excluded).toBe(false);
    expect((await rawLeaf(`ou=backup,sstVirtualMachine=kvm-001,${VMS}`))['sstbackupexcludefrombackup']).toBeUndefined();
    await dir.setExcluded('kvm-002', false);
    expect((await dir.effectiveSettings((await dir.getVm('kvm-002'))!)).excluded).toBe(false);
    await dir.setExcluded('kvm-002', true);
    expect((await dir.effectiveSettings((await dir.getVm('kvm-002'))!)).excluded).toBe(true);
  });
});

describe('leaves', () => {
  const leaf = '20121002T010000Z';
  const leafDn = `ou=${leaf},ou=backup,sstVirtualMachine=kvm-001,${VMS}`;

  it('createLeaf adds the leaf once; a second create returns false', async () => {
    expect(await dir.createLeaf('kvm-001', leaf)).toBe(true);
    expect(await dir.createLeaf('kvm-001', leaf)).toBe(false);
    const raw = await rawLeaf(leafDn);
    expect(raw['objectclass']).toEqual(expect.arrayContaining(['organizationalUnit', 'sstProvisioning']));
    expect(raw['sstprovisioningmode']).toEqual(['initialize']);
    expect(raw['sstprovisioningexecutiondate']).toEqual(['0']);
    expect(raw['sstprovisioningreturnvalue']).toEqual(['0']);
    expect(isLeafName(raw['sstprovisioningstate']?.[0] ?? '')).toBe(true);

    const leaves = await dir.listLeaves('kvm-001');
    expect(leaves).toHaveLength(1);
    expect(leaves[0]).toMatchObject({ vm: 'kvm-001', leaf, mode: 'initialize', returnValue: 0, executionTime: {} });
    expect(leaves[0]!.modifiedAt).toBeInstanceOf(Date);
    expect(Math.abs(leaves[0]!.modifiedAt!.getTime() - Date.now())).toBeLessThan(60_000);
    expect(await dir.getLeaf(leaves[0]!.dn)).toEqual(leaves[0]);
  });

  it('createLeaf creates ou=backup when the VM has none', async () => {
    expect(await dir.createLeaf('kvm-002', '20121003T010000Z')).toBe(true); // kvm-002 has the seed's exclusion entry
    expect(await dir.createLeaf('kvm-003', '20121003T010000Z')).toBe(true); // has settings
    const vms = await dir.listVms({ node: 'node-01.example.com' });
    const all = await dir.listLeavesOfVms(vms.map((v) => v.name));
    expect(all.map((l) => `${l.vm}/${l.leaf}`)).toEqual(['kvm-001/20121002T010000Z', 'kvm-002/20121003T010000Z']);
    expect((await dir.listLeavesOfVms(['kvm-003'])).map((l) => l.vm)).toEqual(['kvm-003']);
    expect(await dir.listLeavesOfVms([])).toEqual([]);
    expect(await dir.listLeaves('kvm-404')).toEqual([]);
  });

  it('casMode writes mode, state, return value and merges execution times', async () => {
    expect(await dir.casMode(leafDn, 'initialize', 'initialized', { state: '20121002T010001Z' })).toBe(true);
    expect(await dir.casMode(leafDn, 'initialized', 'snapshot', { state: '0' })).toBe(true);
    expect(await dir.casMode(leafDn, 'snapshot', 'snapshotting')).toBe(true);
    expect(await dir.casMode(leafDn, 'snapshotting', 'snapshotted', {
      state: '20121002T010011Z', returnValue: 0, executionTime: { snapshot: 1.23, downtime: 0.4 },
    })).toBe(true);
    let raw = await rawLeaf(leafDn);
    expect(raw['sstprovisioningmode']).toEqual(['snapshotted']);
    expect(raw['sstprovisioningstate']).toEqual(['20121002T010011Z']);
    expect(raw['sstprovisioningreturnvalue']).toEqual(['0']);
    expect([...(raw['sstprovisioningexecutiontime'] ?? [])].sort()).toEqual(['downtime: 0.4', 'snapshot: 1.23']);

    expect(await dir.casMode(leafDn, 'snapshotted', 'merge', { state: '0' })).toBe(true);
    expect(await dir.casMode(leafDn, 'merge', 'merging')).toBe(true);
    expect(await dir.casMode(leafDn, 'merging', 'merged', { state: '20121002T010500Z', returnValue: 11, executionTime: { merge: 12.5, snapshot: 1.5 } })).toBe(true);
    raw = await rawLeaf(leafDn);
    expect([...(raw['sstprovisioningexecutiontime'] ?? [])].sort()).toEqual(['downtime: 0.4', 'merge: 12.5', 'snapshot: 1.5']);
    const l = await dir.getLeaf(leafDn);
    expect(l).toMatchObject({ mode: 'merged', state: '20121002T010500Z', returnValue: 11, executionTime: { downtime: 0.4, merge: 12.5, snapshot: 1.5 } });
  });

  it('casMode with a wrong expected mode returns false and changes nothing', async () => {
    const before = await rawLeaf(leafDn);
    expect(await dir.casMode(leafDn, 'snapshot', 'snapshotting', { state: '0', returnValue: 5, executionTime: { snapshot: 99 } })).toBe(false);
    expect(await rawLeaf(leafDn)).toEqual(before);
  });

  it('casMode on a leaf that does not exist throws', async () => {
    await expect(dir.casMode(`ou=20000101T000000Z,ou=backup,sstVirtualMachine=kvm-001,${VMS}`, 'a', 'b')).rejects.toThrow(BackupError);
  });

  it('two concurrent casMode from the same expected mode: exactly one wins', async () => {
    const other = await connect(slapd);
    try {
      for (let round = 0; round < 15; round++) {
        const leafName = `201301${String(round + 1).padStart(2, '0')}T000000Z`;
        const dn = `ou=${leafName},ou=backup,sstVirtualMachine=kvm-002,${VMS}`;
        expect(await dir.createLeaf('kvm-002', leafName)).toBe(true);
        expect(await dir.casMode(dn, 'initialize', 'snapshot', { state: '0' })).toBe(true);
        const contenders = [dir, other, dir, other];
        const results = await Promise.all(contenders.map((d, i) => d.casMode(dn, 'snapshot', 'snapshotting', { returnValue: i })));
        expect(results.filter(Boolean)).toHaveLength(1);
        const winner = results.indexOf(true);
        expect(await dir.getLeaf(dn)).toMatchObject({ mode: 'snapshotting', returnValue: winner });
      }
    } finally {
      await other.close();
    }
  });

  it('deleteLeaf removes a leaf and what is below it; deleting again is a no-op; non-leaves are refused', async () => {
    const dn = `ou=20140101T000000Z,ou=backup,sstVirtualMachine=kvm-001,${VMS}`;
    expect(await dir.createLeaf('kvm-001', '20140101T000000Z')).toBe(true);
    await ldapAdd(slapd, `dn: ou=extra,${dn}\nobjectClass: organizationalUnit\nou: extra\n`);
    await dir.deleteLeaf(dn);
    expect(await dir.getLeaf(dn)).toBeUndefined();
    await dir.deleteLeaf(dn);
    await expect(dir.deleteLeaf(`sstVirtualMachine=kvm-001,${VMS}`)).rejects.toThrow(/not a backup leaf/);
    expect(await dir.getVm('kvm-001')).toBeDefined();
  });
});

describe('names', () => {
  it('rejects unsafe VM, leaf and node names before they reach a DN', async () => {
    const unsafe = ['../etc', 'kvm,ou=x', 'a b', '', '-rf', 'x)(objectClass=*'];
    for (const name of unsafe) {
      await expect(dir.getVm(name), name).rejects.toMatchObject({ code: ReturnCode.unsafeName });
      await expect(dir.createLeaf(name, '20121002T010000Z'), name).rejects.toMatchObject({ code: ReturnCode.unsafeName });
      await expect(dir.listLeaves(name), name).rejects.toMatchObject({ code: ReturnCode.unsafeName });
      // Reading by name is safe with any value (a filter object, not a string): one odd
      // entry must not blind a daemon to the other VMs, so the safe names still answer.
      expect((await dir.listLeavesOfVms(['kvm-001', name])).every((l) => l.vm === 'kvm-001'), name).toBe(true);
      await expect(dir.exportVmLdif(name), name).rejects.toBeInstanceOf(BackupError);
      await expect(dir.listVms({ node: name }), name).rejects.toMatchObject({ code: ReturnCode.unsafeName });
    }
    await expect(dir.createLeaf('kvm-001', 'today')).rejects.toMatchObject({ code: ReturnCode.unsafeName });
    await expect(dir.createLeaf('kvm-001', '20121002T010000Z,ou=x')).rejects.toMatchObject({ code: ReturnCode.unsafeName });
  });
});

describe('exportVmLdif', () => {
  it('exports the VM subtree without ou=backup, re-importable into a fresh slapd', async () => {
    // A value that needs base64 in LDIF and one with a leading space (on
    // ou=devices: the original's disk class has no description).
    await ldapModify(slapd, [
      `dn: ou=devices,sstVirtualMachine=kvm-001,${VMS}`, 'changetype: modify', 'add: description',
      `description:: ${Buffer.from('Zürich disk: ü').toString('base64')}`,
      `description:: ${Buffer.from(' leading space').toString('base64')}`, '',
    ].join('\n'));
    const ldif = await dir.exportVmLdif('kvm-001');
    expect(ldif).not.toMatch(/ou=backup/i);
    expect(ldif).not.toMatch(/entryCSN|entryUUID|modifyTimestamp/i);
    expect(ldif).toMatch(/^description:: /m);
    const dns = [...ldif.replace(/\n /g, '').matchAll(/^dn: (.*)$/gm)].map((m) => m[1]);
    expect(dns).toEqual([
      `sstVirtualMachine=kvm-001,${VMS}`,
      `ou=devices,sstVirtualMachine=kvm-001,${VMS}`,
      `sstDisk=vda,ou=devices,sstVirtualMachine=kvm-001,${VMS}`,
    ]);

    const fresh = await startSlapd();
    try {
      const freshDir = await connect(fresh);
      try {
        await freshDir.deleteSubtree(`sstVirtualMachine=kvm-001,${VMS}`);
        await ldapAdd(fresh, ldif);
        const userAttrs = ['*'];
        const original = parseLdif(await ldapSearch(slapd, `sstVirtualMachine=kvm-001,${VMS}`, '(objectClass=*)', userAttrs));
        for (const dn of [...original.keys()]) if (dn.includes('ou=backup,')) original.delete(dn);
        const reimported = parseLdif(await ldapSearch(fresh, `sstVirtualMachine=kvm-001,${VMS}`, '(objectClass=*)', userAttrs));
        expect(reimported).toEqual(original);
        expect(reimported.get(`ou=devices,sstVirtualMachine=kvm-001,${VMS}`.toLowerCase())?.['description']?.sort()).toEqual([' leading space', 'Zürich disk: ü']);
        expect((await freshDir.getVm('kvm-001'))?.disks).toHaveLength(1);
      } finally {
        await freshDir.close();
      }
    } finally {
      await fresh.stop();
    }
  });

  it('throws for a VM that does not exist', async () => {
    await expect(dir.exportVmLdif('kvm-404')).rejects.toMatchObject({ code: ReturnCode.cannotFindMachine });
  });
});
