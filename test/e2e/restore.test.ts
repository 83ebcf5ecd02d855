import { describe, expect, it } from 'vitest';
import { mkdir, open, readdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { World, vmDn, POOL, STORAGE_POOL } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { ldapModify, ldapSearch } from '../helpers/slapd.js';
import { writeOriginalBackup } from '../helpers/originalBackup.js';
import { backingFileOf, guestReadMatches, guestWrite, imageMatches, macsOf, virsh } from '../helpers/libvirt.js';
import { runRestore, type RestoreDecisions } from '../../src/control/runRestore.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { BackupLayout } from '../../src/domain/layout.js';
import { parseDomainDisks } from '../../src/hypervisor/domainXml.js';
import { run } from '../../src/hypervisor/exec.js';
import { readManifestFile } from '../../src/node/backupIterations.js';
import { fileDigest } from '../../src/node/fileDigest.js';
import type { LeafEntry } from '../../src/directory/types.js';

const A = 0xab;
const B = 0xcd;
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };
const CLI = path.resolve('bin/stoney-backup.js');

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

const backup = (vm: string, leaf: string): Promise<LeafEntry> => w.backupOk(vm, leaf);

async function restore(vm: string, leaf: string, decide: RestoreDecisions | 'abort' = { prefer: 'backup', overrides: {} }, target?: string) {
  const l = await w.leaf(vm, leaf);
  return runRestore({ directory: w.directory, vm: (await w.directory.getVm(vm))!, leaf: l, policy, logger: w.logger, pollMs: 100, decide: async () => decide, ...(target ? { target } : {}) });
}

const layoutOf = (vm: string, leaf: string): BackupLayout => w.layoutOf(vm, leaf);

/** The VM's directory subtree without volatile attributes, for before/after comparisons. */
async function subtree(vm: string): Promise<string> {
  const out = await ldapSearch(w.slapd, vmDn(vm), '(objectClass=*)', ['*']);
  return out.split('\n\n').filter((e) => !/^dn: ou=restore,/m.test(e)).map((e) => e.split('\n').filter((l) => !/^sstProvisioningState:/.test(l)).sort().join('\n')).sort().join('\n\n');
}

async function files(): Promise<string> {
  return (await execa('find', [w.root, '-type', 'f', '-printf', '%p %s %T@ %m\n'])).stdout.split('\n').sort().join('\n');
}

describe('restore of a running VM with two disks', () => {
  it('brings back exactly the backed-up data and the saved memory state', async () => {
    const tiny = await w.addVm('r2', { targets: ['vda', 'vdb'], running: true, pattern: A });
    const leaf = '20261122T050000Z';
    await backup(tiny.name, leaf);
    for (const t of ['vda', 'vdb']) await guestWrite(tiny.name, t, B, '2M', '1M');
    const t0 = performance.now();
    const r = await restore(tiny.name, leaf);
    console.log(`restore of a running two-disk VM (its guest ignores ACPI): ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    expect({ outcome: r.outcome, mode: r.leaf.mode, rv: r.leaf.returnValue }).toEqual({ outcome: 'restored', mode: 'finished', rv: 0 });
    expect(await virsh.domStateReason(tiny.name)).toBe('running (restored)');
    expect(await virsh.isPersistent(tiny.name)).toBe(true);
    for (const t of ['vda', 'vdb']) {
      expect(await guestReadMatches(tiny.name, t, A, '0', '1M')).toBe(true);
      expect(await guestReadMatches(tiny.name, t, 0, '2M', '1M')).toBe(true);
    }
    for (const d of tiny.disks) expect(await backingFileOf(d.path)).toBeUndefined();
    expect(parseDomainDisks(await virsh.dumpXml(tiny.name)).map((d) => d.backingChain)).toEqual([[], []]);
    // The restore's retain directory and request are gone once it ended.
    await w.waitFor(async () => (await w.directory.getRestoreRequest(r.leaf.dn)) === undefined);
    expect((await execa('find', [path.join(w.retainRoot, 'vm-persistent', STORAGE_POOL, tiny.name), '-mindepth', '1'])).stdout).toBe('');
  });
});

describe('the running VM a restore replaces', () => {
  it('is saved at once (no wait for a guest that ignores ACPI) and a failed restore resumes it exactly from that state', async () => {
    // Tiny VMs have no guest OS: they ignore ACPI, as a hung or hostile guest would.
    const vm = await w.addVm('rstop', { running: true, pattern: A });
    const leaf = '20261122T050050Z';
    await backup(vm.name, leaf);
    await guestWrite(vm.name, 'vda', B, '2M', '1M');
    // The failure comes after the VM was stopped: the move of the live image aside
    // finds a non-empty directory at its place in the restore's work directory.
    const vmRetain = path.join(w.retainRoot, 'vm-persistent', STORAGE_POOL, vm.name);
    const l = await w.leaf(vm.name, leaf);
    const t0 = performance.now();
    const r = await runRestore({
      directory: w.directory, vm: (await w.directory.getVm(vm.name))!, leaf: l, policy, logger: w.logger, pollMs: 100,
      decide: async () => {
        // The restore works in the leaf's own retain directory, as the original.
        expect(await readdir(vmRetain)).toEqual([leaf]);
        await mkdir(path.join(vmRetain, leaf, `live-${path.basename(vm.disks[0]!.path)}`, 'blocker'), { recursive: true });
        return { prefer: 'backup', overrides: {} };
      },
    });
    const wall = (performance.now() - t0) / 1000;
    console.log(`restore of a guest ignoring ACPI, failing after the stop and rolled back: ${wall.toFixed(1)} s`);
    expect({ outcome: r.outcome, failedAt: r.failedAt }).toEqual({ outcome: 'failed', failedAt: { mode: 'restored', returnValue: 40 } });
    // Resumed from the state saved when it was stopped, not booted: the guest never noticed.
    expect(await virsh.domStateReason(vm.name)).toBe('running (restored)');
    expect(await virsh.isPersistent(vm.name)).toBe(true);
    expect(await guestReadMatches(vm.name, 'vda', A, '0', '1M')).toBe(true);
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
    expect(await backingFileOf(vm.disks[0]!.path)).toBeUndefined();
    expect(parseDomainDisks(await virsh.dumpXml(vm.name))[0]!.source).toBe(vm.disks[0]!.path);
  });
});

describe('restore of a shut-off VM', () => {
  it('defines it and leaves it off; with force start it boots', async () => {
    const off = await w.addVm('roff', { running: false, pattern: A });
    await backup(off.name, '20261122T050100Z');
    const r = await restore(off.name, '20261122T050100Z');
    expect(r.outcome).toBe('restored');
    expect(await virsh.domState(off.name)).toBe('shut off');
    expect(await imageMatches(off.disks[0]!.path, A, '0', '1M')).toBe(true);

    const forced = await w.addVm('rforce', { running: false, pattern: A, backupAttributes: ['sstVirtualizationVirtualMachineForceStart: TRUE'] });
    await backup(forced.name, '20261122T050200Z');
    expect((await restore(forced.name, '20261122T050200Z')).outcome).toBe('restored');
    expect(await virsh.domStateReason(forced.name)).toBe('running (booted)');
    expect(await guestReadMatches(forced.name, 'vda', A, '0', '1M')).toBe(true);
  });
});

describe('restore as a new VM while the original runs', () => {
  it('makes a copy with the backup data, a new name, UUID and MAC; the original is untouched', async () => {
    const orig = await w.addVm('rorig', { running: true, pattern: A, nic: true });
    const leaf = '20261122T050300Z';
    await backup(orig.name, leaf);
    await guestWrite(orig.name, 'vda', B, '2M', '1M');
    const copy = w.name('rcopy');
    w.track(copy);
    const r = await restore(orig.name, leaf, { prefer: 'backup', overrides: {} }, copy);
    expect({ outcome: r.outcome, mode: r.leaf.mode }).toEqual({ outcome: 'restored', mode: 'finished' });
    // Original: still running, still both patterns.
    expect(await virsh.domState(orig.name)).toBe('running');
    expect(await guestReadMatches(orig.name, 'vda', A, '0', '1M')).toBe(true);
    expect(await guestReadMatches(orig.name, 'vda', B, '2M', '1M')).toBe(true);
    // Copy: runs, has A only, own disk, own UUID and MAC, its own directory entry.
    expect(await virsh.domState(copy)).toBe('running');
    expect(await guestReadMatches(copy, 'vda', A, '0', '1M')).toBe(true);
    expect(await guestReadMatches(copy, 'vda', 0, '2M', '1M')).toBe(true);
    const copyDisk = parseDomainDisks(await virsh.dumpXml(copy))[0]!;
    expect(copyDisk.source).toBe(path.join(w.imageDir, `${copy}-${path.basename(orig.disks[0]!.path)}`));
    const [origMac] = await macsOf(orig.name);
    const [copyMac] = await macsOf(copy);
    expect(copyMac).toMatch(/^52:54:00:/);
    expect(copyMac).not.toBe(origMac);
    const uuid = async (v: string) => (await run('virsh', ['-c', w.libvirtUri, 'domuuid', v])).stdout.trim();
    expect(await uuid(copy)).not.toBe(await uuid(orig.name));
    const entry = await ldapSearch(w.slapd, vmDn(copy), '(objectClass=*)', ['sstMacAddress', 'sstSourceFile', 'sstVirtualMachine']);
    expect(entry).toContain(`sstMacAddress: ${copyMac}`);
    expect(entry).toContain(`sstSourceFile: ${copyDisk.source}`);
    expect(entry).not.toMatch(/^dn: ou=backup,/m);
  });
});

describe('abort in the interaction phase', () => {
  it('leaves the VM, the directory and the files exactly as before', async () => {
    const vm = await w.addVm('rabort', { running: true, pattern: A });
    const leaf = '20261122T050400Z';
    await backup(vm.name, leaf);
    await guestWrite(vm.name, 'vda', B, '2M', '1M');
    const before = { tree: await subtree(vm.name), files: await files(), state: await virsh.domState(vm.name) };
    const r = await restore(vm.name, leaf, 'abort');
    expect({ outcome: r.outcome, mode: r.leaf.mode }).toEqual({ outcome: 'aborted', mode: 'finished' });
    await w.waitFor(async () => (await w.directory.getRestoreRequest(r.leaf.dn)) === undefined);
    expect({ tree: await subtree(vm.name), files: await files(), state: await virsh.domState(vm.name) }).toEqual(before);
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
  });
});

describe('conflicts between the backup and the live VM', () => {
  async function changedMemoryVm(short: string, leaf: string) {
    const vm = await w.addVm(short, { running: true, pattern: A });
    await backup(vm.name, leaf);
    // After the backup the VM gets 64 MiB, in the directory and in its definition.
    await ldapModify(w.slapd, `dn: ${vmDn(vm.name)}\nchangetype: modify\nreplace: sstMemory\nsstMemory: ${64 * 1024 * 1024}\n`);
    await run('virsh', ['-c', w.libvirtUri, 'setmaxmem', vm.name, '65536', '--config']);
    await run('virsh', ['-c', w.libvirtUri, 'setmem', vm.name, '65536', '--config']);
    return vm.name;
  }
  const memoryOf = async (vm: string) => ({
    ldap: /sstMemory: (\d+)/.exec(await ldapSearch(w.slapd, vmDn(vm), '(objectClass=*)', ['sstMemory'], 'base'))?.[1],
    xmlKiB: /<memory unit='KiB'>(\d+)<\/memory>/.exec(await virsh.dumpXml(vm, { inactive: true }))?.[1],
  });

  it('taking the backup gives a consistent 32 MiB entry and definition, restored from its state', async () => {
    const vm = await changedMemoryVm('rconfb', '20261122T050500Z');
    const seen: unknown[] = [];
    const l = await w.leaf(vm, '20261122T050500Z');
    const r = await runRestore({
      directory: w.directory, vm: (await w.directory.getVm(vm))!, leaf: l, policy, logger: w.logger, pollMs: 100,
      decide: async (c) => { seen.push(...c); return { prefer: 'backup', overrides: {} }; },
    });
    expect(r.outcome).toBe('restored');
    expect(seen.map((c) => (c as { id: string }).id)).toContain('memory');
    expect(await memoryOf(vm)).toEqual({ ldap: String(32 * 1024 * 1024), xmlKiB: '32768' });
    expect(await virsh.domStateReason(vm)).toBe('running (restored)');
  });

  it('taking the live value gives a consistent 64 MiB entry and definition (cold boot: the saved state has 32 MiB)', async () => {
    const vm = await changedMemoryVm('rconfl', '20261122T050600Z');
    const r = await restore(vm, '20261122T050600Z', { prefer: 'backup', overrides: { memory: 'live' } });
    expect(r.outcome).toBe('restored');
    expect(await memoryOf(vm)).toEqual({ ldap: String(64 * 1024 * 1024), xmlKiB: '65536' });
    expect(await virsh.domState(vm)).toBe('running');
    expect(await guestReadMatches(vm, 'vda', A, '0', '1M')).toBe(true);
  });
});

describe('a corrupted backup', () => {
  it('is refused with 38 before anything live is touched', async () => {
    const vm = await w.addVm('rcorrupt', { running: true, pattern: A });
    const leaf = '20261122T050700Z';
    await backup(vm.name, leaf);
    await guestWrite(vm.name, 'vda', B, '2M', '1M');
    const image = layoutOf(vm.name, leaf).backupPath(path.basename(vm.disks[0]!.path));
    const f = await open(image, 'r+');
    const byte = Buffer.alloc(1);
    await f.read(byte, 0, 1, 4096 + 17);
    byte[0] = (byte[0] ?? 0) ^ 0xff;
    await f.write(byte, 0, 1, 4096 + 17);
    await f.close();
    const before = { tree: await subtree(vm.name), state: await virsh.domState(vm.name) };
    const r = await restore(vm.name, leaf);
    expect({ outcome: r.outcome, mode: r.leaf.mode, failedAt: r.failedAt }).toEqual({
      outcome: 'failed', mode: 'finished', failedAt: { mode: 'unretainedLargeFiles', returnValue: 38 },
    });
    expect({ tree: await subtree(vm.name), state: await virsh.domState(vm.name) }).toEqual(before);
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
  });
});

describe('a backup whose manifest an earlier stoney-backup version wrote (plain sha256 of every file)', () => {
  /** The manifest rewritten as versions before 2026-11-30 wrote it: `sha256` (of the whole file) instead of `sha256PerMiB`. */
  async function asEarlierVersionWroteIt(vm: string, leaf: string, corrupt?: string): Promise<void> {
    const layout = layoutOf(vm, leaf);
    const manifest = await readManifestFile(layout.manifestPath, leaf);
    expect(manifest.files.every((f) => f.sha256PerMiB !== undefined && f.sha256 === undefined)).toBe(true);
    const files = [];
    for (const { sha256PerMiB: _new, ...f } of manifest.files) {
      const { sha256 } = await fileDigest(layout.backupPath(f.name.slice(0, -leaf.length - 1)), 'sha256');
      files.push({ ...f, sha256: f.name === corrupt ? 'f'.repeat(64) : sha256 });
    }
    await writeFile(layout.manifestPath, JSON.stringify({ ...manifest, files }, null, 2));
  }

  it('verifies and restores: each file is checked against the sha256 it records', async () => {
    const vm = await w.addVm('roldsum', { running: true, pattern: A });
    const leaf = '20261122T050800Z';
    await backup(vm.name, leaf);
    await asEarlierVersionWroteIt(vm.name, leaf);
    const v = await execa('node', [CLI, 'verify', vm.name, leaf], { env: { ...process.env, ...w.cliEnv() }, reject: false });
    expect({ code: v.exitCode, err: v.stderr }).toEqual({ code: 0, err: '' });
    await guestWrite(vm.name, 'vda', B, '2M', '1M');
    const r = await restore(vm.name, leaf);
    expect({ outcome: r.outcome, mode: r.leaf.mode, rv: r.leaf.returnValue }).toEqual({ outcome: 'restored', mode: 'finished', rv: 0 });
    expect(await guestReadMatches(vm.name, 'vda', A, '0', '1M')).toBe(true);
    expect(await guestReadMatches(vm.name, 'vda', 0, '2M', '1M')).toBe(true);
  });

  it('whose recorded sha256 of the disk image does not match: verify says so, and the restore is refused with 38', async () => {
    const vm = await w.addVm('roldbad', { running: true, pattern: A });
    const leaf = '20261122T050900Z';
    await backup(vm.name, leaf);
    const image = `${path.basename(vm.disks[0]!.path)}.${leaf}`;
    await asEarlierVersionWroteIt(vm.name, leaf, image);
    const v = await execa('node', [CLI, 'verify', vm.name, leaf], { env: { ...process.env, ...w.cliEnv() }, reject: false });
    expect(v.exitCode).toBe(1);
    expect(v.stdout + v.stderr).toContain(`${image} does not match its manifest`);
    const r = await restore(vm.name, leaf);
    expect({ outcome: r.outcome, failedAt: r.failedAt }).toEqual({ outcome: 'failed', failedAt: { mode: 'unretainedLargeFiles', returnValue: 38 } });
    expect(await virsh.domState(vm.name)).toBe('running');
  });
});

describe('a backup in the original implementation\'s layout', () => {
  it('restores (placeholder state: defined and off, disk as backed up)', async () => {
    const vm = await w.addVm('rlegacy', { running: false, pattern: A });
    const leaf = '20140109T134445Z';
    await writeOriginalBackup(w, vm, leaf);
    // The live disk changes after that backup.
    await run('qemu-io', ['-c', `write -P ${B} 0 1M`, vm.disks[0]!.path]);
    const r = await restore(vm.name, leaf);
    expect(r.outcome).toBe('restored');
    expect(await virsh.domState(vm.name)).toBe('shut off');
    expect(await imageMatches(vm.disks[0]!.path, A, '0', '1M')).toBe(true);
  });
});

describe('a backup an earlier stoney-backup version wrote under the VM-pool path', () => {
  it('is listed as restorable from there, restored, and then deleted from there', async () => {
    const vm = await w.addVm('rvmpool', { running: false, pattern: A });
    const leaf = '20261122T051500Z';
    await backup(vm.name, leaf);
    // Earlier versions wrote <root>/<vm-type>/<sstVirtualMachinePool>/<vm>/<leaf>: move the backup there.
    const current = layoutOf(vm.name, leaf);
    const earlier = new BackupLayout({ rootDirectory: w.backupRoot, retainDirectory: w.retainRoot, vmType: 'vm-persistent', pool: POOL, vm: vm.name, leaf });
    expect(POOL).not.toBe(STORAGE_POOL);
    await mkdir(earlier.vmBackupDir, { recursive: true });
    await rename(current.backupDir, earlier.backupDir);

    const env = {
      STONEY_LDAP_URL: w.slapd.url, STONEY_LDAP_BIND_DN: w.slapd.bindDn, STONEY_LDAP_PASSWORD_FILE: w.slapd.passwordFile,
      STONEY_LDAP_BASE_DN: w.slapd.baseDn, STONEY_LIBVIRT_URI: w.libvirtUri, STONEY_IMAGE_ROOTS: w.imageRoot,
      STONEY_ALLOWED_ROOTS: `${w.backupRoot}:${w.retainRoot}`,
    };
    const list = await execa('node', [CLI, 'list', vm.name, '--json'], { env, reject: false });
    expect(list.exitCode).toBe(0);
    const [row] = (JSON.parse(list.stdout) as { backups: { leaf: string; restorable: boolean; backupDir: string; vmPoolPath: boolean; sizeBytes: number | null }[] }).backups;
    expect({ leaf: row?.leaf, restorable: row?.restorable, backupDir: row?.backupDir, vmPoolPath: row?.vmPoolPath }).toEqual({ leaf, restorable: true, backupDir: earlier.backupDir, vmPoolPath: true });
    expect(row?.sizeBytes).toBeGreaterThan(0);

    await run('qemu-io', ['-c', `write -P ${B} 0 1M`, vm.disks[0]!.path]);
    const r = await restore(vm.name, leaf);
    expect(r.outcome).toBe('restored');
    expect(await imageMatches(vm.disks[0]!.path, A, '0', '1M')).toBe(true);
    // The restore's work directory went away with it, wherever it was made.
    await w.waitFor(async () => (await execa('find', [w.retainRoot, '-path', `*${vm.name}*`, '-type', 'f'])).stdout === '');

    const del = await execa('node', [CLI, 'delete', vm.name, leaf], { env, reject: false });
    expect({ code: del.exitCode, out: del.stdout }).toEqual({ code: 0, out: `${vm.name}: backup ${leaf} deleted` });
    expect(await readdir(earlier.vmBackupDir)).toEqual([]);
  });
});

describe('backups an earlier version wrote under the VM-pool path, and rotation', () => {
  it('count towards sstBackupNumberOfIterations and are rotated away like the others', async () => {
    const vm = await w.addVm('rvmrot', { running: false, pattern: A, backupAttributes: ['sstBackupNumberOfIterations: 2'] });
    const [first, second] = ['20261122T052000Z', '20261122T052100Z'];
    for (const leaf of [first, second]) {
      await backup(vm.name, leaf);
      const earlier = new BackupLayout({ rootDirectory: w.backupRoot, retainDirectory: w.retainRoot, vmType: 'vm-persistent', pool: POOL, vm: vm.name, leaf });
      await mkdir(earlier.vmBackupDir, { recursive: true });
      await rename(layoutOf(vm.name, leaf).backupDir, earlier.backupDir);
    }
    const earlierDir = path.join(w.backupRoot, 'vm-persistent', POOL, vm.name);
    // A file that is not a backup's stays whatever happens.
    await mkdir(path.join(earlierDir, 'notes'));
    await backup(vm.name, '20261122T052200Z');
    // Two kept: the new one (storage-pool path) and the newer earlier one; the oldest is gone.
    expect((await readdir(earlierDir)).sort()).toEqual([second, 'notes']);
    expect(await readdir(layoutOf(vm.name, '20261122T052200Z').vmBackupDir)).toEqual(['20261122T052200Z']);
    await backup(vm.name, '20261122T052300Z');
    expect(await readdir(earlierDir)).toEqual(['notes']);
  });
});

describe('the restore command', () => {
  it('restores non-interactively with --prefer, and refuses to guess without a decision', async () => {
    const vm = await w.addVm('rcli', { running: true, pattern: A });
    const leaf = '20261122T050800Z';
    await backup(vm.name, leaf);
    await ldapModify(w.slapd, `dn: ${vmDn(vm.name)}\nchangetype: modify\nreplace: sstVCPU\nsstVCPU: 2\n`);
    const env = {
      STONEY_LDAP_URL: w.slapd.url, STONEY_LDAP_BIND_DN: w.slapd.bindDn, STONEY_LDAP_PASSWORD_FILE: w.slapd.passwordFile,
      STONEY_LDAP_BASE_DN: w.slapd.baseDn, STONEY_LIBVIRT_URI: w.libvirtUri, STONEY_IMAGE_ROOTS: w.imageRoot,
      STONEY_ALLOWED_ROOTS: `${w.backupRoot}:${w.retainRoot}`,
    };
    const dry = await execa('node', [CLI, 'restore', vm.name, leaf, '--dry-run'], { env, reject: false });
    expect(dry.exitCode).toBe(0);
    expect(dry.stdout).toContain('dry run');
    const undecided = await execa('node', [CLI, 'restore', vm.name, leaf], { env, reject: false, input: '' });
    expect(undecided.exitCode, undecided.stderr).toBe(2);
    expect(undecided.stderr).toContain('need a decision');
    expect((await w.leaf(vm.name, leaf)).mode).toBe('finished');
    const ok = await execa('node', [CLI, 'restore', vm.name, leaf, '--prefer', 'backup'], { env, reject: false, input: '' });
    expect({ code: ok.exitCode, out: ok.stdout }).toEqual({ code: 0, out: `${vm.name}: restored from ${leaf}` });
    expect(await ldapSearch(w.slapd, vmDn(vm.name), '(objectClass=*)', ['sstVCPU'], 'base')).toContain('sstVCPU: 1');
  });
});
