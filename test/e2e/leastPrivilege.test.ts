/**
 * Issue 10: the daemons under the shipped ACL (ldif/acl-example.ldif) with
 * their own identities, not the rootDN — the node daemon bound as its node
 * identity, the control side (a control daemon, `backup`'s and `restore`'s
 * drivers) as the control identity. A backup, a restore in place and a
 * delete go through end to end; the node identity cannot drive a VM of
 * another node. Real slapd, libvirt/QEMU.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { World, vmDn, POOL } from '../helpers/world.js';
import { guestReadMatches, guestWrite, virsh } from '../helpers/libvirt.js';
import { ldapAdd } from '../helpers/slapd.js';
import { ldifText, vmEntryLines } from '../helpers/directoryEntries.js';
import { CONTROL_DN, bindAs, loadShippedAcl, nodeAccountDn } from '../helpers/serviceAccounts.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { runRestore } from '../../src/control/runRestore.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';

const A = 0xab;
const B = 0xcd;
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };

let w: World;
let control: LdapBackupDirectory;
let node: LdapBackupDirectory;

beforeAll(async () => {
  w = await World.start();
  const nodeDn = nodeAccountDn(w.nodeName);
  await loadShippedAcl(w.slapd, [
    { dn: CONTROL_DN, cn: 'stoney-backup-control', password: 'control-secret' },
    { dn: nodeDn, cn: w.nodeName, password: 'node-secret' },
  ], [nodeDn]);
  control = await bindAs(w.slapd, CONTROL_DN, 'control-secret');
  node = await bindAs(w.slapd, nodeDn, 'node-secret');
  await w.startNodeDaemon(w.nodeName, node);
});

afterAll(async () => {
  await w?.cleanup();
  await control?.close();
  await node?.close();
});

describe('the daemons under the shipped ACL, each with its own identity', () => {
  it('back up, restore in place and delete a backup of a running VM', async () => {
    const tiny = await w.addVm('acl', { running: true, pattern: A, backupAttributes: ['sstBackupNumberOfIterations: 2'] });
    const vm = (await control.getVm(tiny.name))!;
    const [first] = await runBackupBatch({ directory: control, vms: [vm], leaf: '20261122T070000Z', policy, logger: w.logger });
    expect({ mode: first?.mode, rv: first?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    const [second] = await runBackupBatch({ directory: control, vms: [vm], leaf: '20261122T070100Z', policy, logger: w.logger });
    expect({ mode: second?.mode, rv: second?.returnValue }).toEqual({ mode: 'finished', rv: 0 });

    await guestWrite(tiny.name, 'vda', B, '0', '1M');
    const r = await runRestore({ directory: control, vm, leaf: first!, policy, logger: w.logger, pollMs: 100, decide: async () => ({ prefer: 'backup', overrides: {} }) });
    expect({ outcome: r.outcome, mode: r.leaf.mode, rv: r.leaf.returnValue, failedAt: r.failedAt }).toEqual({ outcome: 'restored', mode: 'finished', rv: 0, failedAt: undefined });
    expect(await virsh.domStateReason(tiny.name)).toBe('running (restored)');
    expect(await guestReadMatches(tiny.name, 'vda', A, '0', '1M')).toBe(true);
    // The node removed the restore request with its own identity.
    await w.waitFor(async () => (await control.getRestoreRequest(first!.dn)) === undefined);

    // delete, as the original web UI / control instance writes it.
    expect(await control.casMode(second!.dn, 'finished', 'delete', { state: '0' })).toBe(true);
    const deleted = await w.waitForMode(tiny.name, second!.leaf, ['deleted']);
    expect(deleted.returnValue).toBe(0);
  });

  it('the node identity cannot drive a leaf of a VM on another node', async () => {
    const other = w.name('elsewhere');
    await ldapAdd(w.slapd, ldifText(vmEntryLines(vmDn(other), { name: other, node: 'node-02.example.com', pool: POOL })));
    const leaf = '20261122T070200Z';
    expect(await control.createLeaf(other, leaf)).toBe(true);
    const l = (await control.listLeaves(other))[0]!;
    await expect(node.casMode(l.dn, 'initialize', 'snapshotting')).rejects.toMatchObject({ ldapCode: 50 });
    expect((await control.getLeaf(l.dn))?.mode).toBe('initialize');
  });
});
