import { beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { restoreFromBackupFiles } from '../helpers/backupFiles.js';
import { World, POOL, STORAGE_POOL, vmDn } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { ldapModify } from '../helpers/slapd.js';
import { backingFileOf, guestReadMatches, guestWrite, imageMatches, virsh } from '../helpers/libvirt.js';
import { BackupLayout, NO_STATE_MARKER } from '../../src/domain/layout.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { fileDigest } from '../../src/node/fileDigest.js';
import { parseDomainDisks } from '../../src/hypervisor/domainXml.js';
import type { LeafEntry } from '../../src/directory/types.js';
import type { BackupManifest } from '../../src/node/retainStep.js';

const A = 0xab;
const B = 0xcd;
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

const layoutOf = (vm: string, leaf: string): BackupLayout => w.layoutOf(vm, leaf);

const vmStorageGid = Number(execFileSync('getent', ['group', 'vm-storage']).toString().split(':')[2]);

/** The manifest lists exactly the files of the backup directory, with their real size and sha256PerMiB (what new backups record). */
async function expectManifestMatches(layout: BackupLayout): Promise<BackupManifest> {
  const manifest = JSON.parse(await readFile(layout.manifestPath, 'utf8')) as BackupManifest;
  const onDisk = (await readdir(layout.backupDir)).filter((n) => n !== 'manifest.json').sort();
  expect(manifest.files.map((f) => f.name).sort()).toEqual(onDisk);
  for (const f of manifest.files) {
    const real = await fileDigest(path.join(layout.backupDir, f.name));
    expect({ name: f.name, size: real.size, sha256PerMiB: real.sha256PerMiB }).toEqual({ name: f.name, size: f.size, sha256PerMiB: f.sha256PerMiB });
    // Disk images also say how they are stored: the first backup of a VM is whole, with the reason.
    if (f.format !== undefined) expect({ name: f.name, backing: f.backing, fullReason: f.fullReason }).toEqual({ name: f.name, backing: undefined, fullReason: expect.any(String) });
  }
  return manifest;
}

/** Drive a backup like the control side, pausing after the snapshot so the test can write as the guest. */
async function backupWithGuestWriteAfterSnapshot(vm: string, leaf: string, afterSnapshot: () => Promise<void>): Promise<LeafEntry> {
  expect(await w.directory.createLeaf(vm, leaf)).toBe(true);
  const dn = (await w.leaf(vm, leaf)).dn;
  expect(await w.directory.casMode(dn, 'initialize', 'initialized', { state: '20261122T000000Z' })).toBe(true);
  expect(await w.directory.casMode(dn, 'initialized', 'snapshot', { state: '0' })).toBe(true);
  const snap = await w.waitForMode(vm, leaf, ['snapshotted']);
  expect(snap.returnValue).toBe(0);
  await afterSnapshot();
  const vmEntry = (await w.directory.getVm(vm))!;
  const [done] = await runBackupBatch({ directory: w.directory, vms: [vmEntry], leaf, policy, logger: w.logger });
  return done!;
}

describe('backup of a running VM with two disks', () => {
  const leaf = '20261122T030000Z';
  let vm: string;
  let images: string[];
  let result: LeafEntry;

  beforeAll(async () => {
    const tiny = await w.addVm('run2', { targets: ['vda', 'vdb'], running: true, pattern: A });
    vm = tiny.name;
    images = tiny.disks.map((d) => d.path);
    result = await backupWithGuestWriteAfterSnapshot(vm, leaf, async () => {
      // The guest writes B after the snapshot: it lands in the overlay, not in the backup.
      await guestWrite(vm, 'vda', B, '2M', '1M');
      await guestWrite(vm, 'vdb', B, '2M', '1M');
    });
  });

  it('finishes the leaf with return value 0 and execution times', () => {
    expect(result.mode).toBe('finished');
    expect(result.returnValue).toBe(0);
    expect(Object.keys(result.executionTime).sort()).toEqual(['downtime', 'merge', 'retain', 'snapshot']);
    expect(result.executionTime['downtime']).toBeGreaterThan(0);
  });

  it('stores the backup below the disks\' storage-pool directory, as the original does, never below the VM pool', async () => {
    // The disks live in <imageRoot>/vm-persistent/<STORAGE_POOL>; the VM entry names another pool (POOL).
    expect(images.map((i) => path.relative(w.imageRoot, path.dirname(i)))).toEqual([`vm-persistent/${STORAGE_POOL}`, `vm-persistent/${STORAGE_POOL}`]);
    expect((await w.directory.getVm(vm))!.pool).toBe(POOL);
    expect(await readdir(path.join(w.backupRoot, 'vm-persistent', STORAGE_POOL, vm))).toEqual([leaf]);
    expect(await readdir(path.join(w.backupRoot, 'vm-persistent'))).not.toContain(POOL);
    expect(await readdir(path.join(w.retainRoot, 'vm-persistent'))).not.toContain(POOL);
  });

  it('keeps the VM running, seeing both the old and the new data', async () => {
    expect(await virsh.domState(vm)).toBe('running');
    for (const t of ['vda', 'vdb']) {
      expect(await guestReadMatches(vm, t, A, '0', '1M')).toBe(true);
      expect(await guestReadMatches(vm, t, B, '2M', '1M')).toBe(true);
    }
  });

  it('leaves the live disks without backing file after the merge', async () => {
    for (const img of images) expect(await backingFileOf(img)).toBeUndefined();
    const live = parseDomainDisks(await virsh.dumpXml(vm));
    expect(live.map((d) => [d.target, d.source, d.backingChain])).toEqual([
      ['vda', images[0], []],
      ['vdb', images[1], []],
    ]);
  });

  it('stores disks that hold exactly the data of the snapshot instant', async () => {
    const layout = layoutOf(vm, leaf);
    for (const img of images) {
      const backupImage = layout.backupPath(path.basename(img));
      expect(await backingFileOf(backupImage)).toBeUndefined();
      expect(await imageMatches(backupImage, A, '0', '1M')).toBe(true);
      expect(await imageMatches(backupImage, 0, '2M', '1M')).toBe(true); // B never reached the backup
    }
  });

  it('writes the reference layout, the manifest, owner and mode, and empties retain', async () => {
    const layout = layoutOf(vm, leaf);
    const manifest = await expectManifestMatches(layout);
    expect(manifest.files.map((f) => f.name).sort()).toEqual(
      [`${vm}-vda.qcow2.${leaf}`, `${vm}-vdb.qcow2.${leaf}`, `${vm}.ldif.${leaf}`, `${vm}.state.${leaf}`, `${vm}.xml.${leaf}`].sort(),
    );
    for (const f of manifest.files) {
      const s = await stat(path.join(layout.backupDir, f.name));
      expect({ file: f.name, mode: s.mode & 0o777, gid: s.gid }).toEqual({ file: f.name, mode: 0o640, gid: vmStorageGid });
    }
    const dir = await stat(layout.backupDir);
    expect({ mode: dir.mode & 0o777, gid: dir.gid }).toEqual({ mode: 0o750, gid: vmStorageGid });
    await expect(stat(layout.retainDir)).rejects.toThrow(/ENOENT/);
    const ldif = await readFile(layout.backupPath(`${vm}.ldif`), 'utf8');
    expect(ldif).toContain(`dn: sstVirtualMachine=${vm},`);
    expect(ldif).toContain('dn: sstDisk=vdb,ou=devices,');
    expect(ldif).not.toMatch(/^dn: ou=backup,/m);
    expect(await readFile(layout.backupPath(`${vm}.xml`), 'utf8')).not.toContain('backingStore');
  });

  it('has a state file that restores the VM to the snapshot instant', async () => {
    await restoreFromBackupFiles(vm, layoutOf(vm, leaf), images, w.root);
    expect(await virsh.domState(vm)).toBe('running');
    for (const t of ['vda', 'vdb']) {
      expect(await guestReadMatches(vm, t, A, '0', '1M')).toBe(true);
      expect(await guestReadMatches(vm, t, 0, '2M', '1M')).toBe(true);
    }
  });
});

describe('backup of a shut-off VM', () => {
  it('backs it up with the placeholder state and leaves it off, on a flat image', async () => {
    const tiny = await w.addVm('off1', { running: false, pattern: A });
    const leaf = '20261122T031500Z';
    const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(tiny.name))!], leaf, policy, logger: w.logger });
    expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    expect(await virsh.domState(tiny.name)).toBe('shut off');
    const layout = layoutOf(tiny.name, leaf);
    expect(await readFile(layout.backupPath(`${tiny.name}.state`), 'utf8')).toBe(`${NO_STATE_MARKER}\n`);
    expect(await imageMatches(layout.backupPath(path.basename(tiny.disks[0]!.path)), A, '0', '1M')).toBe(true);
    expect(await backingFileOf(tiny.disks[0]!.path)).toBeUndefined();
    expect(await imageMatches(tiny.disks[0]!.path, A, '0', '1M')).toBe(true);
    await expectManifestMatches(layout);
  });
});

describe('a batch of three VMs', () => {
  it('snapshots all before merging any, and does not merge a VM whose snapshot failed', async () => {
    const names = [];
    for (const s of ['b1', 'b2', 'b3']) names.push((await w.addVm(s, { running: true, pattern: A })).name);
    // A fourth VM of the batch is unknown to libvirt: its snapshot fails with 23.
    const ghost = (await w.addVm('b0ghost', { running: true, noDomain: true })).name;
    const vms = await Promise.all([...names, ghost].map(async (n) => (await w.directory.getVm(n))!));
    const leaf = '20261122T033000Z';
    const seen: { vm: string; mode: string }[] = [];
    const leaves = await runBackupBatch({ directory: w.directory, vms, leaf, policy, logger: w.logger, pollMs: 50, onLeafChange: (l) => seen.push({ vm: l.vm, mode: l.mode }) });
    const byVm = Object.fromEntries(leaves.map((l) => [l.vm, { mode: l.mode, rv: l.returnValue }]));
    expect(byVm).toEqual({
      [names[0]!]: { mode: 'finished', rv: 0 },
      [names[1]!]: { mode: 'finished', rv: 0 },
      [names[2]!]: { mode: 'finished', rv: 0 },
      [ghost]: { mode: 'snapshotted', rv: 23 },
    });
    // In what the control side observed, no merge started before every snapshot had ended.
    const firstMerge = seen.findIndex((s) => ['merge', 'merging', 'merged'].includes(s.mode));
    const lastSnapshotted = Math.max(...[...names, ghost].map((n) => seen.findIndex((s) => s.vm === n && s.mode === 'snapshotted')));
    expect(firstMerge).toBeGreaterThan(lastSnapshotted);
    expect(seen.some((s) => s.vm === ghost && s.mode === 'merge')).toBe(false);
    for (const n of names) expect(await virsh.domState(n)).toBe('running');
  });
});

describe('a VM without sstVirtualMachineType', () => {
  it('is refused with 63 before anything is touched, never backed up under vm-/', async () => {
    const tiny = await w.addVm('notype', { running: true, pattern: A });
    await ldapModify(w.slapd, `dn: ${vmDn(tiny.name)}\nchangetype: modify\ndelete: sstVirtualMachineType\n`);
    const leaf = '20261122T034500Z';
    const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(tiny.name))!], leaf, policy, logger: w.logger });
    expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'snapshotted', rv: 63 });
    expect(await virsh.domState(tiny.name)).toBe('running');
    expect(parseDomainDisks(await virsh.dumpXml(tiny.name)).map((d) => d.backingChain)).toEqual([[]]);
    expect(await imageMatches(tiny.disks[0]!.path, A, '0', '1M')).toBe(true);
    const written = execFileSync('find', [w.retainRoot, w.backupRoot, '-name', `*${tiny.name}*`], { encoding: 'utf8' });
    expect(written).toBe('');
  });
});

describe('a backup filesystem without room for the backup', () => {
  it('fails retain with 47 before writing anything; retain keeps the copies, the VM keeps its disk', async () => {
    const tiny = await w.addVm('full', { running: false, pattern: A });
    // The VM's backup directory is a 256 KiB filesystem: less than its 1 MiB of data.
    const vmBackupDir = path.dirname(layoutOf(tiny.name, '20261122T035000Z').backupDir);
    await mkdir(vmBackupDir, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'stoney-e2e-full', vmBackupDir]);
    try {
      const leaf = '20261122T035000Z';
      const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(tiny.name))!], leaf, policy, logger: w.logger });
      expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'retained', rv: 47 });
      expect(await readdir(vmBackupDir)).toEqual([]);
      const layout = layoutOf(tiny.name, leaf);
      expect((await readdir(layout.retainDir)).sort()).toEqual([`${tiny.name}.ldif`, `${tiny.name}.state`, `${tiny.name}.xml`, path.basename(tiny.disks[0]!.path)].sort());
      expect(await virsh.domState(tiny.name)).toBe('shut off');
      expect(await backingFileOf(tiny.disks[0]!.path)).toBeUndefined();
      expect(await imageMatches(tiny.disks[0]!.path, A, '0', '1M')).toBe(true);
    } finally {
      execFileSync('umount', [vmBackupDir]);
    }
  });
});

describe('iteration rotation', () => {
  it('keeps sstBackupNumberOfIterations backups: directories and leaves', async () => {
    const tiny = await w.addVm('rot', { running: true, pattern: A, backupAttributes: ['sstBackupNumberOfIterations: 2'] });
    const vm = (await w.directory.getVm(tiny.name))!;
    const leaves = ['20261120T030000Z', '20261121T030000Z', '20261122T030000Z'];
    for (const leaf of leaves) {
      const [done] = await runBackupBatch({ directory: w.directory, vms: [vm], leaf, policy, logger: w.logger });
      expect({ leaf, mode: done?.mode, rv: done?.returnValue }).toEqual({ leaf, mode: 'finished', rv: 0 });
    }
    const dirs = (await readdir(path.dirname(layoutOf(tiny.name, leaves[0]!).backupDir))).sort();
    expect(dirs).toEqual(leaves.slice(1));
    expect((await w.directory.listLeaves(tiny.name)).map((l) => l.leaf)).toEqual(leaves.slice(1));
  });
});
