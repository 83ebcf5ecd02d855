/**
 * The daemons and the CLI on an installation of the original stoney cloud:
 * the directory holds exactly the original schema's definitions plus the
 * project's extension (ldif/config.ldif), every VM carries the original's
 * mandatory attributes, the settings use the original installer's modes
 * (660/770), and the disks live in a storage pool whose UUID is not the VM
 * pool's. One backup through the protocol, one by kvmbackup, and a backup the
 * original implementation wrote: listed, restored and deleted.
 */
import { describe, expect, it } from 'vitest';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { POOL, STORAGE_POOL, vmDn, type World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { ldapSearch } from '../helpers/slapd.js';
import { imageMatches, virsh } from '../helpers/libvirt.js';
import { writeOriginalBackup } from '../helpers/originalBackup.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { runRestore } from '../../src/control/runRestore.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { run } from '../../src/hypervisor/exec.js';

const A = 0xab;
const B = 0xcd;
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };
const CLI = path.resolve('bin/stoney-backup.js');
/** The original installer's modes, INTEGERs read as octal. */
const ORIGINAL_MODES = ['sstVirtualizationDiskImagePermission: 660', 'sstVirtualizationDiskImageDirectoryPermission: 770'];
/** A node no daemon of the world serves: only kvmbackup's own in-process node works there. */
const CRON_NODE = 'node-04.example.com';

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

const cliEnv = (): Record<string, string> => ({
  STONEY_LDAP_URL: w.slapd.url, STONEY_LDAP_BIND_DN: w.slapd.bindDn, STONEY_LDAP_PASSWORD_FILE: w.slapd.passwordFile,
  STONEY_LDAP_BASE_DN: w.slapd.baseDn, STONEY_LIBVIRT_URI: w.libvirtUri, STONEY_IMAGE_ROOTS: w.imageRoot,
  STONEY_ALLOWED_ROOTS: `${w.backupRoot}:${w.retainRoot}`, STONEY_NODE_NAME: CRON_NODE, STONEY_RUN_DIR: w.runDir,
});

interface ListRow { leaf: string; mode: string; restorable: boolean; backupDir: string | null; vmPoolPath: boolean }
async function listBackups(vm: string): Promise<ListRow[]> {
  const r = await execa('node', [CLI, 'list', vm, '--json'], { env: cliEnv(), reject: false });
  expect({ code: r.exitCode, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  return (JSON.parse(r.stdout) as { backups: ListRow[] }).backups;
}

const mode = async (p: string): Promise<string> => ((await stat(p)).mode & 0o7777).toString(8);

describe('a backup through the protocol', () => {
  it('lands in the storage pool\'s directory under the original names, with the 660/770 modes, on a leaf the original schema accepts', async () => {
    const vm = await w.addVm('ob', { running: true, pattern: A, backupAttributes: ORIGINAL_MODES });
    const leaf = '20261124T010000Z';
    const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf, policy, logger: w.logger });
    expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'finished', rv: 0 });

    const layout = w.layoutOf(vm.name, leaf);
    expect(layout.backupDir).toBe(path.join(w.backupRoot, 'vm-persistent', STORAGE_POOL, vm.name, leaf));
    const disk = `${path.basename(vm.disks[0]!.path)}.${leaf}`;
    expect(await readdir(layout.backupDir)).toEqual(expect.arrayContaining([`${vm.name}.xml.${leaf}`, `${vm.name}.ldif.${leaf}`, `${vm.name}.state.${leaf}`, disk]));
    expect(await readdir(path.join(w.backupRoot, 'vm-persistent'))).toEqual([STORAGE_POOL]); // never the VM pool
    // 660 and 770 read as octal (decimal 770 would be 01402); new directories get the mode less the umask.
    expect({ image: await mode(layout.backupPath(path.basename(vm.disks[0]!.path))), dir: await mode(layout.backupDir) }).toEqual({ image: '660', dir: (0o770 & ~process.umask()).toString(8) });
    // The leaf as the web UI reads it: the original's attributes only, one execution time per step.
    const raw = await ldapSearch(w.slapd, done!.dn, '(objectClass=*)', ['*'], 'base');
    expect(raw.match(/^sstProvisioningExecutionTime: (\w+):/gm)?.map((l) => l.split(' ')[1]).sort()).toEqual(expect.arrayContaining(['merge:', 'retain:', 'snapshot:']));
    expect(raw).toMatch(/^sstProvisioningMode: finished$/m);
    expect(raw).toMatch(/^sstProvisioningReturnValue: 0$/m);
    expect(POOL).not.toBe(STORAGE_POOL);
  });
});

describe('kvmbackup (cron on a node)', () => {
  it('backs the node\'s VM up, and list shows it restorable from the storage pool\'s directory', async () => {
    const vm = await w.addVm('okb', { running: false, pattern: A, node: CRON_NODE, backupAttributes: ORIGINAL_MODES });
    const r = await execa('node', [CLI, 'kvmbackup', '--include', vm.name], { env: cliEnv(), reject: false });
    expect({ code: r.exitCode, out: r.stdout }).toEqual({ code: 0, out: expect.stringContaining(`${vm.name}: backed up`) as unknown });
    const [row] = await listBackups(vm.name);
    expect(row).toMatchObject({ mode: 'finished', restorable: true, vmPoolPath: false });
    expect(path.dirname(row!.backupDir!)).toBe(path.join(w.backupRoot, 'vm-persistent', STORAGE_POOL, vm.name));
  });
});

describe('a backup the original implementation wrote', () => {
  it('is listed as restorable, restored through the protocol, then deleted through it (delete → deleting → deleted)', async () => {
    const vm = await w.addVm('oorig', { running: false, pattern: A, backupAttributes: ORIGINAL_MODES });
    const leaf = '20140109T134445Z';
    const backupDir = await writeOriginalBackup(w, vm, leaf);
    expect(await listBackups(vm.name)).toEqual([expect.objectContaining({ leaf, mode: 'finished', restorable: true, backupDir, vmPoolPath: false })]);

    await run('qemu-io', ['-c', `write -P ${B} 0 1M`, vm.disks[0]!.path]);
    const l = await w.leaf(vm.name, leaf);
    const r = await runRestore({ directory: w.directory, vm: (await w.directory.getVm(vm.name))!, leaf: l, policy, logger: w.logger, pollMs: 100, decide: async () => ({ prefer: 'backup', overrides: {} }) });
    expect({ outcome: r.outcome, mode: r.leaf.mode, rv: r.leaf.returnValue }).toEqual({ outcome: 'restored', mode: 'finished', rv: 0 });
    expect(await virsh.domState(vm.name)).toBe('shut off'); // the placeholder state: defined, not started
    expect(await imageMatches(vm.disks[0]!.path, A, '0', '1M')).toBe(true);
    expect(await ldapSearch(w.slapd, vmDn(vm.name), '(objectClass=*)', ['sstMemory'], 'base')).toContain(`sstMemory: ${32 * 1024 * 1024}`);

    // Pruning as the original control instance does it: delete on the finished leaf, state 0.
    expect(await w.directory.casMode(l.dn, 'finished', 'delete', { state: '0' })).toBe(true);
    const deleted = await w.waitForMode(vm.name, leaf, ['deleted']);
    expect(deleted.returnValue).toBe(0);
    expect(await readdir(path.dirname(backupDir))).toEqual([]);
    await w.directory.deleteLeaf(deleted.dn);
    expect(await listBackups(vm.name)).toEqual([]);
  });
});
