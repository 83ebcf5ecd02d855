import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { Entry } from 'ldapts';
import { entriesToLdif } from '../../src/directory/ldif.js';
import { BackupError } from '../../src/domain/errors.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';
import { addDeviceElement, diskElement, domainFacts, setDiskSource, setInterfaceMac, setMemoryKiB, setVcpus } from '../../src/domain/restore/domainFacts.js';
import { attributeValues, parseLdif, withAttribute, type LdifEntry } from '../../src/domain/restore/ldifRecords.js';
import {
  applyDecisions,
  checkConsistency,
  computeConflicts,
  formatConflicts,
  decisionsFrom,
  randomMac,
  renameForRestoreAs,
  type RestoreDecisions,
  type RestoreInputs,
} from '../../src/domain/restore/restoreConflicts.js';
import { applyDecisionFile } from '../../src/domain/restore/decisionFile.js';

function fixture(name: string): string {
  return readFileSync(new URL(`../fixtures/${name}`, import.meta.url), 'utf8');
}

const VMS = 'ou=virtual machines,ou=virtualization,ou=services,o=stepping-stone,c=ch';
const VM_DN = `sstVirtualMachine=exp1,${VMS}`;
const POOL = '0f83f084-8080-413e-b558-b678e504836e';
const MAC0 = '52:54:00:aa:bb:01';

/** The real inactive definition with one interface added as libvirt writes it (the fixture has none). */
const NIC = [
  "<interface type='network'>",
  `      <mac address='${MAC0}'/>`,
  "      <source network='default'/>",
  "      <model type='virtio'/>",
  "      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>",
  '    </interface>',
].join('\n');
const XML = addDeviceElement(fixture('dumpxml-inactive.xml'), NIC);

/** The VM's subtree as a search returns it (ldapts entries). */
function subtreeEntries(): Entry[] {
  return [
    {
      dn: VM_DN,
      objectClass: ['top', 'sstVirtualizationVirtualMachine'],
      sstVirtualMachine: 'exp1',
      sstNode: 'node-01.example.com',
      sstVirtualMachinePool: POOL,
      sstVirtualMachineType: 'persistent',
      sstType: 'kvm',
      sstMemory: '33554432',
      sstVCPU: '1',
      description: 'Zürich test machine',
    },
    { dn: `ou=devices,${VM_DN}`, objectClass: ['top', 'organizationalUnit'], ou: 'devices' },
    ...(['vda', 'vdb'] as const).map((t, i) => ({
      dn: `sstDisk=${t},ou=devices,${VM_DN}`,
      objectClass: ['top', 'sstVirtualizationVirtualMachineDisk'],
      sstDisk: t,
      sstDevice: 'disk',
      sstType: 'file',
      sstTargetBus: 'virtio',
      sstDriverType: 'qcow2',
      sstSourceFile: `/tmp/exp/img/d${i + 1}.qcow2`,
    })),
    {
      dn: `sstInterface=net0,ou=devices,${VM_DN}`,
      objectClass: ['top', 'sstVirtualizationVirtualMachineInterface'],
      sstInterface: 'net0',
      sstMacAddress: MAC0,
      sstType: 'network',
    },
  ];
}

/** The backup's LDIF: written by the backup's writer, read back by the restore's parser. */
const BACKUP_LDIF = parseLdif(entriesToLdif(subtreeEntries(), 'backup of exp1'));

/** The live subtree as a search with operational attributes returns it, with its ou=backup and a leaf. */
function liveLdif(): LdifEntry[] {
  const entries: Entry[] = subtreeEntries().map((e) => ({ ...e, entryCSN: '20240301120000.000000Z#000000#000#000000', modifyTimestamp: '20240301120000Z' }));
  entries.push(
    { dn: `ou=backup,${VM_DN}`, objectClass: ['top', 'organizationalUnit'], ou: 'backup' },
    {
      dn: `ou=20240301T020000Z,ou=backup,${VM_DN}`,
      objectClass: ['top', 'organizationalUnit', 'sstProvisioning'],
      ou: '20240301T020000Z',
      sstProvisioningMode: 'unretainedSmallFiles',
      sstProvisioningState: '20240302T101010Z',
      sstProvisioningExecutionDate: '0',
    },
  );
  // Live reads do not go through entriesToLdif (it drops operational attributes): build records directly.
  return entries.map(({ dn, ...attrs }) => ({
    dn,
    attributes: Object.fromEntries(Object.entries(attrs).map(([k, v]) => [k, (Array.isArray(v) ? v : [v]).map(String)])),
  }));
}

function dnOf(rel: string): string {
  return rel === '' ? VM_DN : `${rel},${VM_DN}`;
}

/** Sets one attribute of one entry (by DN relative to the VM) in a copy of the LDIF. */
function edit(ldif: LdifEntry[], rel: string, attribute: string, values: string[]): LdifEntry[] {
  const dn = dnOf(rel);
  if (!ldif.some((e) => e.dn === dn)) throw new Error(`test setup: no ${dn}`);
  return ldif.map((e) => (e.dn === dn ? withAttribute(e, attribute, values) : e));
}

function entry(ldif: LdifEntry[], rel: string): LdifEntry | undefined {
  return ldif.find((e) => e.dn === dnOf(rel));
}

function value(ldif: LdifEntry[], rel: string, attribute: string): string[] | undefined {
  const e = entry(ldif, rel);
  return e === undefined ? undefined : attributeValues(e, attribute);
}

function inputs(over: Partial<RestoreInputs> = {}): RestoreInputs {
  return { vmDn: VM_DN, backupLdif: BACKUP_LDIF, liveLdif: liveLdif(), backupXml: XML, liveXml: XML, ...over };
}

const preferBackup: RestoreDecisions = { prefer: 'backup', overrides: {} };
const preferLive: RestoreDecisions = { prefer: 'live', overrides: {} };

/** Live: memory raised to 64 MiB in the directory and in libvirt. */
function memoryChangedLive(): RestoreInputs {
  return inputs({ liveLdif: edit(liveLdif(), '', 'sstMemory', ['67108864']), liveXml: setMemoryKiB(XML, 65536) });
}

function thrown(fn: () => unknown): BackupError {
  try {
    fn();
  } catch (err) {
    if (err instanceof BackupError) return err;
    throw err;
  }
  throw new Error('expected a BackupError');
}

describe('computeConflicts', () => {
  it('finds nothing when backup and live agree (operational attributes and ou=backup of the live side ignored)', () => {
    expect(computeConflicts(inputs())).toEqual([]);
    expect(checkConsistency(VM_DN, BACKUP_LDIF, XML)).toEqual([]);
  });

  it('makes memory changed live ONE item governing the directory and the XML', () => {
    expect(computeConflicts(memoryChangedLive())).toEqual([
      {
        id: 'memory',
        label: 'Memory',
        backup: '32768 KiB · sstMemory 33554432',
        live: '65536 KiB · sstMemory 67108864',
        governs: { ldap: [{ relDn: '', attribute: 'sstMemory' }], xml: ['/domain/memory', '/domain/currentMemory'] },
      },
    ]);
  });

  it('links vCPUs, disk images and MACs the same way, and compares the rest attribute by attribute', () => {
    let ldif = edit(liveLdif(), '', 'sstVCPU', ['2']);
    ldif = edit(ldif, 'sstDisk=vdb,ou=devices', 'sstSourceFile', ['/tmp/exp/img/d2-moved.qcow2']);
    ldif = edit(ldif, 'sstInterface=net0,ou=devices', 'sstMacAddress', ['52:54:00:CC:DD:EE']);
    ldif = edit(ldif, '', 'description', ['renamed live']);
    ldif = edit(ldif, 'sstDisk=vda,ou=devices', 'sstTargetBus', ['scsi']);
    // Same set in another order, objectClass in another case: no difference.
    ldif = edit(ldif, '', 'objectClass', ['SSTVirtualizationVirtualMachine', 'top']);
    let xml = setVcpus(XML, 2);
    xml = setDiskSource(xml, 'vdb', '/tmp/exp/img/d2-moved.qcow2');
    xml = setInterfaceMac(xml, 0, '52:54:00:cc:dd:ee');

    const items = computeConflicts(inputs({ liveLdif: ldif, liveXml: xml }));
    expect(items.map((i) => [i.id, i.backup, i.live])).toEqual([
      ['vcpus', '1 · sstVCPU 1', '2 · sstVCPU 2'],
      ['disk:vdb', '/tmp/exp/img/d2.qcow2 (qcow2) · sstSourceFile /tmp/exp/img/d2.qcow2', '/tmp/exp/img/d2-moved.qcow2 (qcow2) · sstSourceFile /tmp/exp/img/d2-moved.qcow2'],
      ['nic:0:mac', `${MAC0} (network, default, virtio) · sstMacAddress ${MAC0}`, '52:54:00:cc:dd:ee (network, default, virtio) · sstMacAddress 52:54:00:CC:DD:EE'],
      ['ldap::description', 'Zürich test machine', 'renamed live'],
      ['ldap:sstDisk=vda,ou=devices:ssttargetbus', 'virtio', 'scsi'],
    ]);
    expect(items.map((i) => i.governs)).toEqual([
      { ldap: [{ relDn: '', attribute: 'sstVCPU' }], xml: ['/domain/vcpu'] },
      { ldap: [{ relDn: 'sstDisk=vdb,ou=devices', attribute: 'sstSourceFile' }], xml: ["/domain/devices/disk[target/@dev='vdb']/source"] },
      { ldap: [{ relDn: 'sstInterface=net0,ou=devices', attribute: 'sstMacAddress' }], xml: ['/domain/devices/interface[1]/mac/@address'] },
      { ldap: [{ relDn: '', attribute: 'description' }] },
      { ldap: [{ relDn: 'sstDisk=vda,ou=devices', attribute: 'sstTargetBus' }] },
    ]);
  });

  it('never shows changes at or below the VM ou=backup', () => {
    const live = liveLdif().map((e) =>
      e.dn.startsWith('ou=20240301T020000Z') ? withAttribute(e, 'sstProvisioningMode', ['restoring']) : e,
    );
    live.push({ dn: `ou=20240302T020000Z,ou=backup,${VM_DN}`, attributes: { objectClass: ['organizationalUnit'], ou: ['20240302T020000Z'] } });
    const backup = [...BACKUP_LDIF, { dn: `OU=Backup,${VM_DN}`, attributes: { objectClass: ['organizationalUnit'], ou: ['backup'], description: ['old'] } }];
    expect(computeConflicts(inputs({ backupLdif: backup, liveLdif: live }))).toEqual([]);
    const decided = applyDecisions(inputs({ backupLdif: backup, liveLdif: live }), preferLive);
    expect(decided.ldif.map((e) => e.dn)).toEqual(BACKUP_LDIF.map((e) => e.dn));
  });
});

describe('applyDecisions', () => {
  it('prefer backup: the backup LDIF and XML unchanged', () => {
    const decided = applyDecisions(memoryChangedLive(), preferBackup);
    expect(decided).toEqual({ ldif: BACKUP_LDIF, xml: XML, applied: [{ id: 'memory', side: 'backup' }], stateCompatible: true });
  });

  it('prefer live: memory 64 MiB in the entry and the XML, everything else from the backup', () => {
    const decided = applyDecisions(memoryChangedLive(), preferLive);
    expect(value(decided.ldif, '', 'sstMemory')).toEqual(['67108864']);
    expect(decided.xml).toBe(setMemoryKiB(XML, 65536));
    expect(domainFacts(decided.xml)).toMatchObject({ memoryKiB: 65536, currentMemoryKiB: 65536 });
    expect(decided.ldif).toEqual(edit(BACKUP_LDIF, '', 'sstMemory', ['67108864']));
    expect(decided.applied).toEqual([{ id: 'memory', side: 'live' }]);
    // The saved state has 32 MiB: the daemon must define and boot instead.
    expect(decided.stateCompatible).toBe(false);
    expect(checkConsistency(VM_DN, decided.ldif, decided.xml)).toEqual([]);
  });

  it('per-item overrides: each item on its own side, directory and XML agreeing', () => {
    let ldif = edit(liveLdif(), '', 'sstMemory', ['67108864']);
    ldif = edit(ldif, '', 'sstVCPU', ['2']);
    ldif = edit(ldif, 'sstDisk=vdb,ou=devices', 'sstSourceFile', ['/srv/moved/d2.qcow2']);
    ldif = edit(ldif, 'sstInterface=net0,ou=devices', 'sstMacAddress', ['52:54:00:cc:dd:ee']);
    ldif = edit(ldif, '', 'description', ['renamed live']);
    const xml = setInterfaceMac(setDiskSource(setVcpus(setMemoryKiB(XML, 65536), 2), 'vdb', '/srv/moved/d2.qcow2'), 0, '52:54:00:cc:dd:ee');
    const inp = inputs({ liveLdif: ldif, liveXml: xml });

    const decided = applyDecisions(inp, { prefer: 'live', overrides: { memory: 'backup', 'NIC:0:MAC': 'backup', 'ldap::description': 'backup' } });
    expect(decided.applied).toEqual([
      { id: 'memory', side: 'backup' },
      { id: 'vcpus', side: 'live' },
      { id: 'disk:vdb', side: 'live' },
      { id: 'nic:0:mac', side: 'backup' },
      { id: 'ldap::description', side: 'backup' },
    ]);
    expect(domainFacts(decided.xml)).toEqual({
      ...domainFacts(XML),
      vcpus: 2,
      disks: [
        { target: 'vda', source: '/tmp/exp/img/d1.qcow2', format: 'qcow2' },
        { target: 'vdb', source: '/srv/moved/d2.qcow2', format: 'qcow2' },
      ],
    });
    expect(value(decided.ldif, '', 'sstMemory')).toEqual(['33554432']);
    expect(value(decided.ldif, '', 'sstVCPU')).toEqual(['2']);
    expect(value(decided.ldif, '', 'description')).toEqual(['Zürich test machine']);
    expect(value(decided.ldif, 'sstDisk=vdb,ou=devices', 'sstSourceFile')).toEqual(['/srv/moved/d2.qcow2']);
    expect(value(decided.ldif, 'sstInterface=net0,ou=devices', 'sstMacAddress')).toEqual([MAC0]);
    // Disk paths may change under a saved state; vCPUs may not.
    expect(decided.stateCompatible).toBe(false);
    expect(checkConsistency(VM_DN, decided.ldif, decided.xml)).toEqual([]);

    const onlyDisk = applyDecisions(inp, { prefer: 'backup', overrides: { 'disk:vdb': 'live' } });
    expect(onlyDisk.stateCompatible).toBe(true);
    expect(onlyDisk.xml).toBe(setDiskSource(XML, 'vdb', '/srv/moved/d2.qcow2'));
  });

  it('refuses with 33 a backup whose LDIF says 64 MiB but whose XML says 32 MiB', () => {
    const backup = edit(BACKUP_LDIF, '', 'sstMemory', ['67108864']);
    const cases: [RestoreInputs, RestoreDecisions][] = [
      [inputs({ backupLdif: backup }), preferBackup],
      [inputs({ backupLdif: backup, liveLdif: undefined, liveXml: undefined }), preferBackup],
      // Without a live VM every item comes from the backup, whatever the preference.
      [inputs({ backupLdif: backup, liveLdif: undefined, liveXml: undefined }), preferLive],
    ];
    for (const [inp, d] of cases) {
      const err = thrown(() => applyDecisions(inp, d));
      expect(err.code).toBe(ReturnCode.backendXmlInconsistency);
      expect(err.code).toBe(33);
      expect(err.message).toBe(
        'the decided directory entries and domain XML contradict each other: memory: sstMemory 67108864 bytes but the XML has 32768 KiB (33554432 bytes)',
      );
    }
    // Taking the live memory (32 MiB in both places) resolves it.
    const fixed = applyDecisions(inputs({ backupLdif: backup }), preferLive);
    expect(value(fixed.ldif, '', 'sstMemory')).toEqual(['33554432']);
    expect(fixed.xml).toBe(XML);
  });

  it('names every contradicting fact', () => {
    let backup = edit(BACKUP_LDIF, '', 'sstVCPU', ['4']);
    backup = edit(backup, 'sstDisk=vda,ou=devices', 'sstSourceFile', ['/elsewhere/d1.qcow2']);
    backup = edit(backup, 'sstInterface=net0,ou=devices', 'sstMacAddress', ['52:54:00:00:00:09']);
    expect(checkConsistency(VM_DN, backup, XML)).toEqual([
      'vCPUs: sstVCPU 4 but the XML has 1',
      'disk vda: sstSourceFile /elsewhere/d1.qcow2 but the XML source is /tmp/exp/img/d1.qcow2',
      'interface 0 (sstInterface=net0,ou=devices): sstMacAddress 52:54:00:00:00:09 but the XML MAC is 52:54:00:aa:bb:01',
    ]);
    expect(checkConsistency(VM_DN, BACKUP_LDIF.filter((e) => !e.dn.startsWith('ou=devices,')), XML)).toEqual([
      'entry sstDisk=vda,ou=devices has no parent entry',
      'entry sstDisk=vdb,ou=devices has no parent entry',
      'entry sstInterface=net0,ou=devices has no parent entry',
    ]);
  });

  it('an interface entry renamed live (same position) is one nic: item for both entries', () => {
    const live = liveLdif().map((e) =>
      e.dn.startsWith('sstInterface=net0,')
        ? { dn: `sstInterface=eth0,ou=devices,${VM_DN}`, attributes: { ...e.attributes, sstInterface: ['eth0'] } }
        : e,
    );
    const inp = inputs({ liveLdif: live });
    expect(computeConflicts(inp).map((i) => [i.id, i.governs])).toEqual([
      ['nic:0', { ldap: [{ relDn: 'sstInterface=net0,ou=devices' }, { relDn: 'sstInterface=eth0,ou=devices' }], xml: ['/domain/devices/interface[1]'] }],
    ]);
    const taken = applyDecisions(inp, preferLive);
    expect(taken.ldif.map((e) => e.dn).filter((d) => d.startsWith('sstInterface'))).toEqual([`sstInterface=eth0,ou=devices,${VM_DN}`]);
    expect(taken.xml).toBe(XML);
    expect(taken.stateCompatible).toBe(true);
    expect(applyDecisions(inp, preferBackup).ldif).toEqual(BACKUP_LDIF);
  });

  it('checks only the facts the LDIF carries (backups of the original implementation)', () => {
    const original = BACKUP_LDIF.filter((e) => !e.dn.startsWith('sstInterface='))
      .map((e) => withAttribute(withAttribute(e, 'sstMemory', []), 'sstVCPU', []));
    const decided = applyDecisions(inputs({ backupLdif: original, liveXml: setMemoryKiB(XML, 65536) }), preferBackup);
    expect(decided.xml).toBe(XML);
    expect(decided.ldif).toEqual(original);
  });

  it('an entry subtree added live is one entry: item; backup drops it, live keeps it (without operational attributes)', () => {
    const live = liveLdif();
    live.push(
      { dn: `ou=notes,${VM_DN}`, attributes: { objectClass: ['organizationalUnit'], ou: ['notes'], entryCSN: ['x'] } },
      { dn: `ou=n1,ou=notes,${VM_DN}`, attributes: { objectClass: ['organizationalUnit'], ou: ['n1'], description: ['first'] } },
    );
    const inp = inputs({ liveLdif: live });
    expect(computeConflicts(inp)).toEqual([
      {
        id: 'entry:ou=notes',
        label: 'Directory entry ou=notes (only in the live directory)',
        backup: null,
        live: 'objectClass: organizationalUnit\nou: notes\n(and 1 entry below it)',
        governs: { ldap: [{ relDn: 'ou=notes' }, { relDn: 'ou=n1,ou=notes' }] },
      },
    ]);
    const kept = applyDecisions(inp, preferBackup);
    expect(entry(kept.ldif, 'ou=notes')).toBeUndefined();
    expect(kept.ldif).toEqual(BACKUP_LDIF);

    const taken = applyDecisions(inp, { prefer: 'backup', overrides: { 'entry:ou=notes': 'live' } });
    expect(taken.ldif.map((e) => e.dn)).toEqual([
      VM_DN, `ou=devices,${VM_DN}`, `ou=notes,${VM_DN}`,
      `sstDisk=vda,ou=devices,${VM_DN}`, `sstDisk=vdb,ou=devices,${VM_DN}`, `sstInterface=net0,ou=devices,${VM_DN}`,
      `ou=n1,ou=notes,${VM_DN}`,
    ]);
    expect(entry(taken.ldif, 'ou=notes')).toEqual({ dn: `ou=notes,${VM_DN}`, attributes: { objectClass: ['organizationalUnit'], ou: ['notes'] } });
    expect(taken.stateCompatible).toBe(true);
  });

  it('an entry only in the backup (removed live): backup keeps it, live drops it', () => {
    const live = liveLdif().filter((e) => e.dn !== `sstDisk=vda,ou=devices,${VM_DN}`).map((e) => e);
    // vda stays in both XMLs: only the directory entry differs, so it is a disk item of the entry alone.
    const items = computeConflicts(inputs({ liveLdif: live }));
    expect(items.map((i) => [i.id, i.label, i.governs])).toEqual([
      ['disk:vda', 'Disk vda (not described alike on both sides)', { ldap: [{ relDn: 'sstDisk=vda,ou=devices' }], xml: ["/domain/devices/disk[target/@dev='vda']"] }],
    ]);
    expect(entry(applyDecisions(inputs({ liveLdif: live }), preferBackup).ldif, 'sstDisk=vda,ou=devices')).toBeDefined();
    const dropped = applyDecisions(inputs({ liveLdif: live }), preferLive);
    expect(entry(dropped.ldif, 'sstDisk=vda,ou=devices')).toBeUndefined();
    expect(dropped.xml).toBe(XML);
  });

  it('a disk added live (XML and entry) is one disk: item; both sides follow the decision', () => {
    const vdb = diskElement(XML, 'vdb') ?? '';
    const vdc = vdb.replace('d2.qcow2', 'd3.qcow2').replace("dev='vdb'", "dev='vdc'").replace("slot='0x03'", "slot='0x05'");
    const liveXml = addDeviceElement(XML, vdc);
    const live = liveLdif();
    const vdbEntry = live.find((e) => e.dn.startsWith('sstDisk=vdb'));
    if (!vdbEntry) throw new Error('setup');
    live.push({
      dn: `sstDisk=vdc,ou=devices,${VM_DN}`,
      attributes: { ...vdbEntry.attributes, sstDisk: ['vdc'], sstSourceFile: ['/tmp/exp/img/d3.qcow2'] },
    });
    const inp = inputs({ liveLdif: live, liveXml });
    expect(computeConflicts(inp)).toEqual([
      {
        id: 'disk:vdc',
        label: 'Disk vdc (only in the live VM)',
        backup: null,
        live: '/tmp/exp/img/d3.qcow2 (qcow2) · sstSourceFile /tmp/exp/img/d3.qcow2',
        governs: { ldap: [{ relDn: 'sstDisk=vdc,ou=devices' }], xml: ["/domain/devices/disk[target/@dev='vdc']"] },
      },
    ]);
    const backup = applyDecisions(inp, preferBackup);
    expect(backup.xml).toBe(XML);
    expect(entry(backup.ldif, 'sstDisk=vdc,ou=devices')).toBeUndefined();
    const taken = applyDecisions(inp, preferLive);
    expect(taken.xml).toBe(liveXml);
    expect(value(taken.ldif, 'sstDisk=vdc,ou=devices', 'sstSourceFile')).toEqual(['/tmp/exp/img/d3.qcow2']);
    expect(taken.stateCompatible).toBe(false);
  });

  it('an interface added live is one nic: item; both sides follow the decision', () => {
    const liveXml = addDeviceElement(XML, NIC.replace(MAC0, '52:54:00:aa:bb:02').replace("slot='0x04'", "slot='0x06'"));
    const live = liveLdif();
    live.push({
      dn: `sstInterface=net1,ou=devices,${VM_DN}`,
      attributes: { objectClass: ['top', 'sstVirtualizationVirtualMachineInterface'], sstInterface: ['net1'], sstMacAddress: ['52:54:00:aa:bb:02'] },
    });
    const inp = inputs({ liveLdif: live, liveXml });
    const items = computeConflicts(inp);
    expect(items.map((i) => [i.id, i.label, i.backup, i.live, i.governs])).toEqual([
      [
        'nic:1',
        'Network interface 1 (sstInterface=net1,ou=devices) present on one side only',
        null,
        '52:54:00:aa:bb:02 (network, default, virtio) · sstMacAddress 52:54:00:aa:bb:02',
        { ldap: [{ relDn: 'sstInterface=net1,ou=devices' }], xml: ['/domain/devices/interface[2]'] },
      ],
    ]);
    expect(applyDecisions(inp, preferBackup).xml).toBe(XML);
    const taken = applyDecisions(inp, preferLive);
    expect(taken.xml).toBe(liveXml);
    expect(entry(taken.ldif, 'sstInterface=net1,ou=devices')?.attributes['sstMacAddress']).toEqual(['52:54:00:aa:bb:02']);
    // And the reverse: an interface of the backup removed live.
    const reverse = { ...inp, backupLdif: taken.ldif, backupXml: taken.xml, liveLdif: liveLdif(), liveXml: XML };
    expect(computeConflicts(reverse).map((i) => i.id)).toEqual(['nic:1']);
    const removed = applyDecisions(reverse, preferLive);
    expect(removed.xml).toBe(XML);
    expect(removed.ldif).toEqual(BACKUP_LDIF);
  });

  it('takes everything from the backup when the VM is gone (directory, libvirt, or both)', () => {
    expect(computeConflicts(inputs({ liveLdif: undefined, liveXml: undefined }))).toEqual([]);
    const gone = applyDecisions(inputs({ liveLdif: undefined, liveXml: undefined }), preferLive);
    expect(gone).toEqual({ ldif: BACKUP_LDIF, xml: XML, applied: [], stateCompatible: true });

    // Undefined in libvirt, changed in the directory: shown, but forced to the backup.
    const half = inputs({ liveLdif: edit(liveLdif(), '', 'sstMemory', ['67108864']), liveXml: undefined });
    expect(computeConflicts(half)).toEqual([
      {
        id: 'memory',
        label: 'Memory',
        backup: '32768 KiB · sstMemory 33554432',
        live: 'sstMemory 67108864',
        governs: { ldap: [{ relDn: '', attribute: 'sstMemory' }] },
      },
    ]);
    const forced = applyDecisions(half, { prefer: 'live', overrides: { memory: 'live' } });
    expect(forced).toEqual({ ldif: BACKUP_LDIF, xml: XML, applied: [{ id: 'memory', side: 'backup' }], stateCompatible: true });

    // Gone from the directory, memory changed in libvirt.
    const noEntry = inputs({ liveLdif: [], liveXml: setMemoryKiB(XML, 65536) });
    expect(computeConflicts(noEntry).map((i) => [i.id, i.backup, i.live])).toEqual([['memory', '32768 KiB · sstMemory 33554432', '65536 KiB']]);
    expect(applyDecisions(noEntry, preferLive).xml).toBe(XML);
  });

  it('refuses overrides for unknown items with 39, naming them', () => {
    const err = thrown(() => applyDecisions(memoryChangedLive(), { prefer: 'backup', overrides: { vcpus: 'live', 'disk:vdz': 'backup' } }));
    expect(err.code).toBe(ReturnCode.unsupportedConfigurationParameter);
    expect(err.message).toBe('unknown conflict id(s) in the restore decisions: "vcpus", "disk:vdz" (known: memory)');
  });

  it('refuses a backup LDIF without the VM entry', () => {
    const err = thrown(() => computeConflicts(inputs({ backupLdif: BACKUP_LDIF.slice(1) })));
    expect(err.code).toBe(ReturnCode.cannotFindMachine);
  });
});

describe('decisionsFrom (the decisions of a restore request)', () => {
  it('reads prefer and overrides', () => {
    expect(decisionsFrom(JSON.parse('{"prefer":"live"}'))).toEqual({ prefer: 'live', overrides: {} });
    expect(decisionsFrom(JSON.parse('{"prefer":"backup","overrides":{"memory":"live","ldap::description":"backup"}}'))).toEqual({
      prefer: 'backup',
      overrides: { memory: 'live', 'ldap::description': 'backup' },
    });
  });

  it('refuses anything else with 39', () => {
    for (const [json, msg] of [
      ['[]', /expected an object/],
      ['{}', /"prefer" must be "backup" or "live", got undefined/],
      ['{"prefer":"both"}', /"prefer" must be/],
      ['{"prefer":"live","overrides":[]}', /"overrides" must be an object/],
      ['{"prefer":"live","overrides":{"memory":"new"}}', /override "memory" must be "backup" or "live", got "new"/],
      ['{"prefer":"live","yes":true}', /unknown field\(s\) yes/],
    ] as const) {
      const err = thrown(() => decisionsFrom(JSON.parse(json)));
      expect(err.code, json).toBe(39);
      expect(err.message, json).toMatch(msg);
    }
  });
});

describe('applyDecisionFile (the original web UI\'s decision: a whole LDIF of the VM)', () => {
  it('a file holding the live memory takes it in the directory and the domain (linked facts follow), a cold boot', () => {
    const file = edit(BACKUP_LDIF, '', 'sstMemory', ['67108864']);
    const decided = applyDecisionFile(memoryChangedLive(), file);
    expect(domainFacts(decided.xml)).toMatchObject({ memoryKiB: 65536 });
    expect(attributeValues(decided.ldif.find((e) => e.dn === VM_DN)!, 'sstMemory')).toEqual(['67108864']);
    expect(decided.applied).toEqual([{ id: 'memory', side: 'live' }]);
    expect(decided.stateCompatible).toBe(false);
  });

  it('a file holding the backup\'s values takes the backup; its edits of attributes without a linked fact are written as they are', () => {
    const file = edit(BACKUP_LDIF, '', 'description', ['edited in the web UI']);
    const decided = applyDecisionFile(memoryChangedLive(), file);
    expect(decided.xml).toBe(XML);
    expect(decided.applied).toEqual([{ id: 'memory', side: 'backup' }]);
    expect(attributeValues(decided.ldif.find((e) => e.dn === VM_DN)!, 'description')).toEqual(['edited in the web UI']);
    expect(decided.stateCompatible).toBe(true);
  });

  it('a linked value of neither side is refused with 33', () => {
    const file = edit(BACKUP_LDIF, '', 'sstMemory', ['134217728']);
    const err = thrown(() => applyDecisionFile(memoryChangedLive(), file));
    expect(err.code).toBe(33);
    expect(err.message).toMatch(/memory: sstMemory 134217728 bytes but the XML has 32768 KiB/);
  });
});

describe('renameForRestoreAs', () => {
  const NEW_DN = `sstVirtualMachine=exp1-copy,${VMS}`;

  it('renames every DN, the name, every disk path and every MAC consistently, keeping nothing of ou=backup', () => {
    const xml = addDeviceElement(XML, NIC.replace(MAC0, '52:54:00:aa:bb:02').replace("slot='0x04'", "slot='0x06'"));
    const ldif: LdifEntry[] = [
      ...BACKUP_LDIF,
      {
        dn: `sstInterface=net1,ou=devices,${VM_DN}`,
        attributes: { objectClass: ['top', 'sstVirtualizationVirtualMachineInterface'], sstInterface: ['net1'], sstMacAddress: ['52:54:00:AA:BB:02'] },
      },
      { dn: `ou=backup,${VM_DN}`, attributes: { objectClass: ['organizationalUnit'], ou: ['backup'] } },
      { dn: `ou=20240301T020000Z,ou=backup,${VM_DN}`, attributes: { objectClass: ['organizationalUnit'], ou: ['20240301T020000Z'] } },
    ];
    const macs = ['52:54:00:10:00:01', '52:54:00:10:00:02', '52:54:00:10:00:03'];
    let macCalls = 0;
    const paths: string[] = [];
    const out = renameForRestoreAs(ldif, xml, {
      oldName: 'exp1',
      newName: 'exp1-copy',
      oldVmDn: VM_DN,
      newVmDn: NEW_DN,
      diskPath: (p) => {
        paths.push(p);
        return p.replace('/img/', '/img/exp1-copy-');
      },
      newMac: () => macs[macCalls++] ?? 'x',
    });

    expect(macCalls).toBe(2);
    expect(paths).toEqual(['/tmp/exp/img/d1.qcow2', '/tmp/exp/img/d2.qcow2']);
    expect(out.ldif.map((e) => e.dn)).toEqual([
      NEW_DN,
      `ou=devices,${NEW_DN}`,
      `sstDisk=vda,ou=devices,${NEW_DN}`,
      `sstDisk=vdb,ou=devices,${NEW_DN}`,
      `sstInterface=net0,ou=devices,${NEW_DN}`,
      `sstInterface=net1,ou=devices,${NEW_DN}`,
    ]);
    expect(value(out.ldif.map((e) => ({ ...e, dn: e.dn.replace(NEW_DN, VM_DN) })), '', 'sstVirtualMachine')).toEqual(['exp1-copy']);
    const at = (rel: string, a: string): string[] | undefined => {
      const e = out.ldif.find((x) => x.dn === (rel === '' ? NEW_DN : `${rel},${NEW_DN}`));
      return e && attributeValues(e, a);
    };
    expect(at('sstDisk=vda,ou=devices', 'sstSourceFile')).toEqual(['/tmp/exp/img/exp1-copy-d1.qcow2']);
    expect(at('sstDisk=vdb,ou=devices', 'sstSourceFile')).toEqual(['/tmp/exp/img/exp1-copy-d2.qcow2']);
    expect(at('sstInterface=net0,ou=devices', 'sstMacAddress')).toEqual(['52:54:00:10:00:01']);
    expect(at('sstInterface=net1,ou=devices', 'sstMacAddress')).toEqual(['52:54:00:10:00:02']);
    expect(JSON.stringify(out.ldif)).not.toMatch(/exp1,|ou=backup|aa:bb/i);

    expect(domainFacts(out.xml)).toEqual({
      name: 'exp1-copy',
      memoryKiB: 32768,
      currentMemoryKiB: 32768,
      vcpus: 1,
      disks: [
        { target: 'vda', source: '/tmp/exp/img/exp1-copy-d1.qcow2', format: 'qcow2' },
        { target: 'vdb', source: '/tmp/exp/img/exp1-copy-d2.qcow2', format: 'qcow2' },
      ],
      interfaces: [
        { mac: '52:54:00:10:00:01', type: 'network', source: 'default', model: 'virtio' },
        { mac: '52:54:00:10:00:02', type: 'network', source: 'default', model: 'virtio' },
      ],
    });
    expect(out.xml).not.toMatch(/<uuid>/);
    expect(checkConsistency(NEW_DN, out.ldif, out.xml)).toEqual([]);
  });

  it('refuses a new DN inside the old one', () => {
    expect(() =>
      renameForRestoreAs(BACKUP_LDIF, XML, {
        oldName: 'exp1', newName: 'x', oldVmDn: VM_DN, newVmDn: `sstVirtualMachine=x,${VM_DN}`, diskPath: (p) => p, newMac: () => randomMac(),
      }),
    ).toThrow(BackupError);
  });
});

describe('randomMac', () => {
  it('is a locally administered QEMU-style address', () => {
    expect(randomMac(() => 0)).toBe('52:54:00:00:00:00');
    expect(randomMac(() => 0.999999)).toBe('52:54:00:ff:ff:ff');
    const seq = [0.1, 0.5, 0.75];
    let i = 0;
    expect(randomMac(() => seq[i++] ?? 0)).toBe('52:54:00:19:80:c0');
    for (let n = 0; n < 50; n += 1) expect(randomMac()).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
  });
});

describe('formatConflicts', () => {
  it('writes one block per item with the id to override', () => {
    const live = liveLdif();
    live.push({ dn: `ou=notes,${VM_DN}`, attributes: { objectClass: ['organizationalUnit'], ou: ['notes'] } });
    const items = computeConflicts({ ...memoryChangedLive(), liveLdif: edit(live, '', 'sstMemory', ['67108864']) });
    expect(formatConflicts(items)).toBe(
      [
        'Memory  [memory]',
        '- backup: 32768 KiB · sstMemory 33554432',
        '+ live:   65536 KiB · sstMemory 67108864',
        '',
        'Directory entry ou=notes (only in the live directory)  [entry:ou=notes]',
        '- backup: (absent)',
        '+ live:   objectClass: organizationalUnit',
        '          ou: notes',
        '',
      ].join('\n'),
    );
    expect(formatConflicts([])).toBe('No differences between the backup and the live VM.\n');
  });
});
