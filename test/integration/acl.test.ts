import path from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Attribute, Change, Client, InsufficientAccessError, NoSuchObjectError } from 'ldapts';
import { startSlapd, ldapAdd, ldapModifyConfig, LDIF_DIR, type PrivateSlapd } from '../helpers/slapd.js';
import { connectDirectory } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';

const BASE = 'o=stepping-stone,c=ch';
const VMS = `ou=virtual machines,ou=virtualization,ou=services,${BASE}`;
const CONTROL_DN = `cn=stoney-backup-control,ou=service accounts,${BASE}`;
const NODE_DN = `cn=node-01.example.com,ou=service accounts,${BASE}`;
const OTHER_DN = `cn=monitoring,ou=service accounts,${BASE}`;

let slapd: PrivateSlapd;
let control: LdapBackupDirectory;
let node: LdapBackupDirectory;
let other: LdapBackupDirectory;

async function as(dn: string, password: string): Promise<LdapBackupDirectory> {
  const file = path.join(slapd.dir, `${dn.slice(3, dn.indexOf(','))}.pw`);
  await writeFile(file, `${password}\n`, { mode: 0o600 });
  return connectDirectory({ url: slapd.url, bindDn: dn, passwordFile: file, baseDn: slapd.baseDn });
}

beforeAll(async () => {
  slapd = await startSlapd();
  await ldapModifyConfig(slapd, await readFile(path.join(LDIF_DIR, 'acl-example.ldif'), 'utf8'));
  const account = (dn: string, cn: string, pw: string) =>
    [`dn: ${dn}`, 'objectClass: organizationalRole', 'objectClass: simpleSecurityObject', `cn: ${cn}`, `userPassword: ${pw}`, ''].join('\n');
  await ldapAdd(slapd, [
    `dn: ou=service accounts,${BASE}\nobjectClass: organizationalUnit\nou: service accounts\n`,
    `dn: ou=groups,${BASE}\nobjectClass: organizationalUnit\nou: groups\n`,
    account(CONTROL_DN, 'stoney-backup-control', 'control-secret'),
    account(NODE_DN, 'node-01.example.com', 'node-secret'),
    account(OTHER_DN, 'monitoring', 'monitoring-secret'),
    `dn: cn=stoney-backup-nodes,ou=groups,${BASE}\nobjectClass: groupOfNames\ncn: stoney-backup-nodes\nmember: ${NODE_DN}\n`,
  ].join('\n'));
  control = await as(CONTROL_DN, 'control-secret');
  node = await as(NODE_DN, 'node-secret');
  other = await as(OTHER_DN, 'monitoring-secret');
});

afterAll(async () => {
  await control?.close();
  await node?.close();
  await other?.close();
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
});
