import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Attribute, Change, Client, InsufficientAccessError, NoSuchObjectError } from 'ldapts';
import { startSlapd, ldapAdd, ldapModifyConfig, type PrivateSlapd } from '../helpers/slapd.js';
import { openLdapSession } from '../../src/directory/connect.js';
import { LdapLeaseStore } from '../../src/directory/LdapLeaseStore.js';
import { ControlLease } from '../../src/control/ControlLease.js';
import pino from 'pino';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { ldifText, vmEntryLines } from '../helpers/directoryEntries.js';
import { BASE, CONTROL_DN, bindAs, loadShippedAcl, nodeAccountDn, passwordFileOf } from '../helpers/serviceAccounts.js';

const VMS = `ou=virtual machines,ou=virtualization,ou=services,${BASE}`;
const NODE_DN = nodeAccountDn('node-01.example.com');
const OTHER_DN = `cn=monitoring,ou=service accounts,${BASE}`;
const NODE2_DN = `cn=node-02.example.com,ou=service accounts,${BASE}`;
/** Named like node-01 but not in the nodes group. */
const IMPOSTOR_DN = `cn=node-01.example.com,ou=people,${BASE}`;

let slapd: PrivateSlapd;
let control: LdapBackupDirectory;
let node: LdapBackupDirectory;
let other: LdapBackupDirectory;
let node2: LdapBackupDirectory;
let impostor: LdapBackupDirectory;

const as = (dn: string, password: string): Promise<LdapBackupDirectory> => bindAs(slapd, dn, password);

beforeAll(async () => {
  slapd = await startSlapd();
  await loadShippedAcl(
    slapd,
    [
      { dn: CONTROL_DN, cn: 'stoney-backup-control', password: 'control-secret' },
      { dn: NODE_DN, cn: 'node-01.example.com', password: 'node-secret' },
      { dn: OTHER_DN, cn: 'monitoring', password: 'monitoring-secret' },
      { dn: NODE2_DN, cn: 'node-02.example.com', password: 'node2-secret' },
    ],
    [NODE_DN, NODE2_DN],
    [`dn: ou=people,${BASE}\nobjectClass: organizationalUnit\nou: people\n`, `dn: ${IMPOSTOR_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: node-01.example.com\nuserPassword: impostor-secret\n`],
  );
  control = await as(CONTROL_DN, 'control-secret');
  node = await as(NODE_DN, 'node-secret');
  other = await as(OTHER_DN, 'monitoring-secret');
  node2 = await as(NODE2_DN, 'node2-secret');
  impostor = await as(IMPOSTOR_DN, 'impostor-secret');
});

afterAll(async () => {
  await control?.close();
  await node?.close();
  await other?.close();
  await node2?.close();
  await impostor?.close();
  await slapd?.stop();
});

describe('ldif/acl-example.ldif', () => {
  const leaf = '20220101T030000Z';
  const leafDn = `ou=${leaf},ou=backup,sstVirtualMachine=kvm-001,${VMS}`;

  it('lets the control identity create leaves and write commands, the node claim and report', async () => {
    expect(await control.createLeaf('kvm-001', leaf)).toBe(true);
    expect(await control.casMode(leafDn, 'initialize', 'snapshot', { state: '0' })).toBe(true);
    expect(await node.casMode(leafDn, 'snapshot', 'snapshotting')).toBe(true);
    expect(await node.casMode(leafDn, 'snapshotting', 'snapshotted', { state: '20220101T030011Z', returnValue: 0, executionTime: { snapshot: 1.5 } })).toBe(true);
    expect(await other.getLeaf(leafDn)).toMatchObject({ mode: 'snapshotted', returnValue: 0, executionTime: { snapshot: 1.5 } });
    await control.setExcluded('kvm-002', true);
    expect((await node.effectiveSettings((await node.getVm('kvm-002'))!)).excluded).toBe(true);
  });

  it('refuses the node: creating or deleting leaves, settings, VM attributes; other users only read', async () => {
    await expect(node.createLeaf('kvm-002', leaf)).rejects.toMatchObject({ ldapCode: 50 });
    await expect(node.deleteLeaf(leafDn)).rejects.toMatchObject({ ldapCode: 50 });
    await expect(node.setExcluded('kvm-001', true)).rejects.toMatchObject({ ldapCode: 50 });
    await expect(other.casMode(leafDn, 'snapshotted', 'merge')).rejects.toMatchObject({ ldapCode: 50 });
    expect((await other.listVms({ node: 'node-01.example.com' })).map((v) => v.name)).toEqual(['kvm-001', 'kvm-002']);

    const client = new Client({ url: slapd.url });
    try {
      await client.bind(NODE_DN, 'node-secret');
      await expect(client.modify(`sstVirtualMachine=kvm-001,${VMS}`, [
        new Change({ operation: 'replace', modification: new Attribute({ type: 'sstNode', values: ['node-02.example.com'] }) }),
      ])).rejects.toBeInstanceOf(InsufficientAccessError);
    } finally {
      await client.unbind();
    }
  });

  it('lifts the size limit for the daemon identities; others get an error, never a short list', async () => {
    await ldapModifyConfig(slapd, 'dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nreplace: olcSizeLimit\nolcSizeLimit: 3\n');
    try {
      for (let d = 1; d <= 8; d++) expect(await control.createLeaf('kvm-002', `202301${String(d).padStart(2, '0')}T000000Z`)).toBe(true);
      expect(await control.listLeaves('kvm-002')).toHaveLength(8);
      await expect(other.listLeaves('kvm-002')).rejects.toMatchObject({ ldapCode: 4 });
      expect(await node.listLeavesOfVms(['kvm-001', 'kvm-002'])).toHaveLength(9);
      expect(await node.scanLeaves({ node: 'node-01.example.com' })).toHaveLength(9);
      expect(await node.listVms()).toHaveLength(2);
    } finally {
      await ldapModifyConfig(slapd, 'dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nreplace: olcSizeLimit\nolcSizeLimit: unlimited\n');
    }
  });

  it('lets control delete a leaf; anonymous sees nothing', async () => {
    await control.deleteLeaf(leafDn);
    expect(await node.listLeaves('kvm-001')).toEqual([]);
    const anonymous = new Client({ url: slapd.url });
    try {
      await expect(anonymous.search(VMS, { scope: 'sub', filter: '(objectClass=*)' })).rejects.toBeInstanceOf(NoSuchObjectError);
    } finally {
      await anonymous.unbind();
    }
  });
  it('confines each node to the leaves of its own VMs (reproduction 4 of issue #10)', async () => {
    const l1 = '20220102T030000Z';
    const l3 = '20220102T040000Z';
    const dn1 = `ou=${l1},ou=backup,sstVirtualMachine=kvm-001,${VMS}`;
    const dn3 = `ou=${l3},ou=backup,sstVirtualMachine=kvm-003,${VMS}`;
    // A VM of node-02 beside node-01's kvm-001 and kvm-002.
    await ldapAdd(slapd, ldifText(
      vmEntryLines(`sstVirtualMachine=kvm-003,${VMS}`, { name: 'kvm-003', node: 'node-02.example.com', pool: '0f83f084-8080-413e-b558-b678e504836e' }),
      [`dn: ou=backup,sstVirtualMachine=kvm-003,${VMS}`, 'objectClass: top', 'objectClass: organizationalUnit', 'ou: backup'],
    ));
    expect(await control.createLeaf('kvm-001', l1)).toBe(true);
    expect(await control.createLeaf('kvm-003', l3)).toBe(true);
    expect(await control.casMode(dn1, 'initialize', 'snapshot', { state: '0' })).toBe(true);
    expect(await control.casMode(dn3, 'initialize', 'snapshot', { state: '0' })).toBe(true);
    // node-02 cannot claim, report or reset a leaf of node-01's VM; neither can a look-alike outside the group.
    await expect(node2.casMode(dn1, 'snapshot', 'snapshotting')).rejects.toMatchObject({ ldapCode: 50 });
    await expect(impostor.casMode(dn1, 'snapshot', 'snapshotting')).rejects.toMatchObject({ ldapCode: 50 });
    await expect(node.casMode(dn3, 'snapshot', 'snapshotting')).rejects.toMatchObject({ ldapCode: 50 });
    expect(await node.casMode(dn1, 'snapshot', 'snapshotting')).toBe(true);
    expect(await node2.casMode(dn3, 'snapshot', 'snapshotting')).toBe(true);
    expect(await node.casMode(dn1, 'snapshotting', 'snapshotted', { state: '20220102T030011Z', returnValue: 0 })).toBe(true);
    await expect(node2.casMode(dn1, 'snapshotted', 'snapshot', { state: '0' })).rejects.toMatchObject({ ldapCode: 50 });
    expect(await other.getLeaf(dn1)).toMatchObject({ mode: 'snapshotted', returnValue: 0 });
  });

  it('gives control and the VM\'s node what a restore needs, and other nodes nothing', async () => {
    const l = '20220103T030000Z';
    const dn = `ou=${l},ou=backup,sstVirtualMachine=kvm-001,${VMS}`;
    expect(await control.createLeaf('kvm-001', l)).toBe(true);
    expect(await control.createRestoreRequest(dn, { target: 'kvm-001' })).toBe(true);
    await node.putRestoreRequest(dn, { target: 'kvm-001', retain: '20220103T031000Z' });
    await expect(node2.putRestoreRequest(dn, { target: 'kvm-001', retain: 'x' })).rejects.toMatchObject({ ldapCode: 50 });
    await control.putRestoreRequest(dn, { target: 'kvm-001', retain: '20220103T031000Z', decisions: { prefer: 'backup', overrides: {} } });
    expect(await other.getRestoreRequest(dn)).toMatchObject({ retain: '20220103T031000Z', decisions: { prefer: 'backup' } });
    // The decided subtree goes back as the VM's node: attributes, a device added and removed.
    const subtree = async (vm: string) => (await import('../../src/domain/restore/ldifRecords.js')).parseLdif(await node.exportVmLdif(vm));
    const entries = await subtree('kvm-001');
    const vmEntry = entries.find((e) => e.dn.startsWith('sstVirtualMachine='))!;
    const bigger = entries.map((e) => (e === vmEntry ? { ...e, attributes: { ...e.attributes, sstMemory: ['67108864'] } } : e));
    const cdrom = { dn: `sstDisk=hdc,ou=devices,sstVirtualMachine=kvm-001,${VMS}`, attributes: { objectClass: ['top', 'sstVirtualizationVirtualMachineDisk'], sstDisk: ['hdc'], sstDevice: ['cdrom'], sstType: ['file'], sstSourceFile: ['/var/virtualization/iso/install.iso'], sstTargetBus: ['ide'] } };
    await node.writeVmSubtree('kvm-001', [...bigger, cdrom]);
    expect((await other.exportVmLdif('kvm-001'))).toMatch(/sstMemory: 67108864[\s\S]*dn: sstDisk=hdc,/);
    await node.writeVmSubtree('kvm-001', bigger);
    expect((await other.exportVmLdif('kvm-001'))).not.toContain('sstDisk=hdc');
    await expect(node2.writeVmSubtree('kvm-001', entries)).rejects.toMatchObject({ ldapCode: 50 });
    // Not even its own node may move a VM to another node.
    const moved = entries.map((e) => (e === vmEntry ? { ...e, attributes: { ...e.attributes, sstNode: ['node-02.example.com'] } } : e));
    await expect(node.writeVmSubtree('kvm-001', moved)).rejects.toMatchObject({ ldapCode: 50 });
    expect((await other.getVm('kvm-001'))?.node).toBe('node-01.example.com');
    await expect(node2.deleteRestoreRequest(dn)).rejects.toMatchObject({ ldapCode: 50 });
    await node.deleteRestoreRequest(dn);
    expect(await other.getRestoreRequest(dn)).toBeUndefined();
  });

  it('lets the control identity hold the control lease; a node may only read who holds it', async () => {
    const leaseAs = async (dn: string) => {
      const session = await openLdapSession({ url: slapd.url, bindDn: dn, passwordFile: passwordFileOf(slapd, dn) });
      return { session, store: new LdapLeaseStore(session, slapd.baseDn) };
    };
    const c = await leaseAs(CONTROL_DN);
    const n = await leaseAs(NODE_DN);
    try {
      expect((await c.store.look('control')).exists).toBe(false);
      expect(await c.store.create('control-a #1')).toBe(true);
      expect(await c.store.swap('control-a #1', 'control-a #2')).toBe(true);
      await expect(n.store.swap('control-a #2', 'node #1')).rejects.toMatchObject({ ldapCode: 50 });
      await expect(n.store.look('node')).rejects.toMatchObject({ ldapCode: 50 }); // its clock probe is a write
      // A control daemon refused like this gives up with the way out instead of waiting forever as a standby.
      const refused = new ControlLease(n.store, { durationMs: 3_000, renewMs: 1_000 }, pino({ level: 'silent' }));
      await expect(refused.acquire(new AbortController().signal)).rejects.toThrow(/acl-example\.ldif/);
      const seen = await n.session.search(`cn=control-lease,ou=backup,ou=configuration,ou=virtualization,ou=services,${BASE}`, { scope: 'base', attributes: ['sstBackupLeaseHolder'] });
      expect(seen[0]?.['sstBackupLeaseHolder']).toBe('control-a #2');
      expect(await c.store.swap('control-a #2', undefined)).toBe(true);
    } finally {
      await c.session.close();
      await n.session.close();
    }
  });
});
