import { describe, expect, it, beforeAll } from 'vitest';
import { lstat, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { backingFileOf, guestReadMatches, guestWrite, imageMatches, virsh } from '../helpers/libvirt.js';
import { runRestore } from '../../src/control/runRestore.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { readManifest } from '../../src/node/retainStep.js';
import type { LeafEntry } from '../../src/directory/types.js';
import { QemuImg } from '../../src/hypervisor/QemuImg.js';

/**
 * Incremental backups on real libvirt/QEMU: after the first, a backup stores
 * only what the guest changed; rotation folds what a kept backup needs;
 * every kept backup restores exactly its moment through the protocol;
 * `verify` finds damage.
 */
const A = 0xab;
const P1 = 0x11;
const P2 = 0x22;
const P3 = 0x33;
const MiB = 1024 * 1024;
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };
const CLI = path.resolve('bin/stoney-backup.js');

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

const backup = (vm: string, leaf: string): Promise<LeafEntry> => w.backupOk(vm, leaf);

async function restore(vm: string, leaf: string) {
  const l = await w.leaf(vm, leaf);
  const r = await runRestore({ directory: w.directory, vm: (await w.directory.getVm(vm))!, leaf: l, policy, logger: w.logger, pollMs: 100, decide: async () => ({ prefer: 'backup', overrides: {} }) });
  expect({ outcome: r.outcome, failedAt: r.failedAt }).toEqual({ outcome: 'restored', failedAt: undefined });
}

async function cli(args: string[]) {
  return execa('node', [CLI, ...args], { env: { ...process.env, ...w.cliEnv() }, reject: false });
}

async function checkpointsOf(vm: string): Promise<string[]> {
  return (await execa('virsh', ['-q', '-c', w.libvirtUri, 'checkpoint-list', vm, '--name', '--topological'])).stdout.split('\n').map((l) => l.trim()).filter(Boolean);
}

async function bitmapsOf(image: string): Promise<string[]> {
  const info = await new QemuImg().info(image, { shared: true, format: 'qcow2' });
  return (info.bitmaps ?? []).map((b) => b.name);
}

async function imageEntry(vm: string, leaf: string, disk: string) {
  const layout = w.layoutOf(vm, leaf);
  const manifest = await readManifest(layout.manifestPath);
  const entry = manifest.files.find((f) => f.name === path.basename(layout.backupPath(path.basename(disk))));
  expect(entry).toBeDefined();
  return { layout, entry: entry!, file: layout.backupPath(path.basename(disk)) };
}

describe('three live backups with guest writes between them, two kept', () => {
  const L1 = '20261129T010000Z';
  const L2 = '20261129T020000Z';
  const L3 = '20261129T030000Z';
  let vm: string;
  let disk: string;

  beforeAll(async () => {
    const tiny = await w.addVm('inc', { running: true, pattern: A, method: 'live', sizeMiB: 256, backupAttributes: ['sstBackupNumberOfIterations: 2', 'sstBackupFullEvery: 7'] });
    vm = tiny.name;
    disk = tiny.disks[0]!.path;
    // 64 MiB of data the guest never changes again: a full copy would store it every time.
    await guestWrite(vm, 'vda', A, '64M', '64M');
    await backup(vm, L1);
    await guestWrite(vm, 'vda', P1, '2M', '1M');
    await backup(vm, L2);
    await guestWrite(vm, 'vda', P2, '4M', '1M');
    await guestWrite(vm, 'vda', P3, '2M', '512K');
    await guestWrite(vm, 'vda', 0, '100M', '1M'); // zeros over data: must not read as the data below
    await backup(vm, L3);
  });

  it('found the third backup\'s changes by the dirty bitmap of the second\'s checkpoint, and kept only the newest checkpoint', async () => {
    expect((await imageEntry(vm, L3, disk)).entry.changesFoundBy).toBe('bitmap');
    expect(await checkpointsOf(vm)).toEqual([`stoney-${L3}`]);
    expect(await bitmapsOf(disk)).toEqual([`stoney-${L3}`]);
  });

  it('stored the second backup as the changes since the first, the third as the changes since the second', async () => {
    const second = await imageEntry(vm, L2, disk);
    const third = await imageEntry(vm, L3, disk);
    // L1 was rotated away; L2 absorbed it (a fold) and is whole now.
    expect(second.entry.backing).toBeUndefined();
    expect(second.entry.fullReason).toMatch(/made whole when 20261129T010000Z was removed/);
    expect(second.entry.changesFoundBy).toBeUndefined(); // it holds both backups' changes now
    expect(third.entry.backing).toEqual({ leaf: L2, name: path.basename(second.file) });
    expect(path.resolve((await backingFileOf(third.file)) ?? '')).toBe(second.file);
    // 1.5 MiB changed: the incremental image holds that plus qcow2 metadata, not the 65 MiB of data.
    expect(third.entry.size).toBeLessThan(4 * MiB);
    expect(second.entry.size).toBeGreaterThan(65 * MiB);
    expect((await stat(third.file)).size).toBe(third.entry.size);
  });

  it('removed the oldest backup directory, and the kept chains read each moment exactly', async () => {
    expect(await lstat(w.layoutOf(vm, L1).backupDir).then(() => true, () => false)).toBe(false);
    const second = (await imageEntry(vm, L2, disk)).file;
    const third = (await imageEntry(vm, L3, disk)).file;
    expect(await imageMatches(second, A, '0', '1M')).toBe(true);
    expect(await imageMatches(second, P1, '2M', '1M')).toBe(true);
    expect(await imageMatches(second, 0, '4M', '1M')).toBe(true);
    expect(await imageMatches(second, A, '64M', '64M')).toBe(true);
    expect(await imageMatches(third, P3, '2M', '512K')).toBe(true);
    expect(await imageMatches(third, P1, '2560K', '512K')).toBe(true);
    expect(await imageMatches(third, P2, '4M', '1M')).toBe(true);
    expect(await imageMatches(third, A, '64M', '36M')).toBe(true);
    expect(await imageMatches(third, 0, '100M', '1M')).toBe(true);
    expect(await imageMatches(third, A, '101M', '27M')).toBe(true);
    expect(await imageMatches(second, A, '100M', '1M')).toBe(true);
  });

  it('list says which backup is incremental and of what; verify finds everything intact', async () => {
    const list = await cli(['list', vm, '--json']);
    expect(list.exitCode).toBe(0);
    const rows = JSON.parse(list.stdout).backups as { leaf: string; kind: string; basedOn: string[]; changesFoundBy: string[] }[];
    expect(rows.filter((r) => r.leaf !== L1).map((r) => [r.leaf, r.kind, r.basedOn, r.changesFoundBy])).toEqual([
      [L2, 'full', [], []],
      [L3, 'incremental', [L2], ['bitmap']],
    ]);
    const v = await cli(['verify', vm, '--json']);
    expect(v.stderr.split('\n').filter((l) => /"level":(50|60)/.test(l))).toEqual([]);
    expect(v.exitCode).toBe(0);
    const report = JSON.parse(v.stdout) as { intact: boolean; backups: { leaf: string; kind: string; needs: string[]; problems: string[] }[] };
    expect(report.backups.map((b) => [b.leaf, b.kind, b.needs, b.problems])).toEqual([
      [L2, 'full', [], []],
      [L3, 'incremental', [L2], []],
    ]);
  });

  it('restores the incremental backup through the protocol with exactly its moment\'s data', async () => {
    await restore(vm, L3);
    expect(await virsh.domState(vm)).toBe('running');
    expect(await guestReadMatches(vm, 'vda', P3, '2M', '512K')).toBe(true);
    expect(await guestReadMatches(vm, 'vda', P1, '2560K', '512K')).toBe(true);
    expect(await guestReadMatches(vm, 'vda', P2, '4M', '1M')).toBe(true);
    expect(await guestReadMatches(vm, 'vda', A, '64M', '36M')).toBe(true);
    expect(await guestReadMatches(vm, 'vda', 0, '100M', '1M')).toBe(true);
    expect(await backingFileOf(disk)).toBeUndefined();
    // The restored disks carry no bitmap, and libvirt forgot the checkpoints with the definition.
    expect(await checkpointsOf(vm)).toEqual([]);
  });

  it('restores the older kept backup too, without the later writes', async () => {
    await restore(vm, L2);
    expect(await guestReadMatches(vm, 'vda', P1, '2M', '1M')).toBe(true);
    expect(await guestReadMatches(vm, 'vda', 0, '4M', '1M')).toBe(true);
    expect(await guestReadMatches(vm, 'vda', A, '64M', '64M')).toBe(true);
    expect(await backingFileOf(disk)).toBeUndefined();
  });

  it('verify detects a flipped byte in a chain member and a missing backing file', async () => {
    const second = (await imageEntry(vm, L2, disk)).file;
    const fd = await import('node:fs/promises').then((m) => m.open(second, 'r+'));
    try {
      const b = Buffer.alloc(1);
      const at = Math.floor((await fd.stat()).size / 2);
      await fd.read(b, 0, 1, at);
      b[0] = (b[0] ?? 0) ^ 0xff;
      await fd.write(b, 0, 1, at);
    } finally {
      await fd.close();
    }
    const flipped = await cli(['verify', vm, L3]);
    expect(flipped.exitCode).toBe(1);
    expect(flipped.stdout).toMatch(/DAMAGED[\s\S]*does not match its manifest/);
    await rm(second);
    const missing = await cli(['verify', vm, '--json']);
    expect(missing.exitCode).toBe(1);
    const report = JSON.parse(missing.stdout) as { backups: { leaf: string; problems: string[] }[] };
    expect(report.backups.find((b) => b.leaf === L3)?.problems.join(' ')).toMatch(/missing or not the size/);
  });

  it('stores the next backup whole, saying why, when the previous chain is broken', async () => {
    const L4 = '20261129T040000Z';
    await backup(vm, L4);
    const fourth = await imageEntry(vm, L4, disk);
    expect(fourth.entry.backing).toBeUndefined();
    expect(fourth.entry.fullReason).toMatch(/chain is broken/);
    expect(await imageMatches(fourth.file, P1, '2M', '1M')).toBe(true);
    const list = JSON.parse((await cli(['list', vm, '--json'])).stdout) as { backups: { leaf: string; fullReasons: { reason: string }[] }[] };
    expect(list.backups.find((b) => b.leaf === L4)?.fullReasons[0]?.reason).toMatch(/chain is broken/);
    // Nothing of the runs is left behind in the backup store.
    const names = await readdir(w.layoutOf(vm, L4).vmBackupDir, { recursive: true });
    expect(names.filter((n) => /partial|fold\.json|rotation-remove/.test(n))).toEqual([]);
  });
});

describe('incremental backups with the save method', () => {
  const L1 = '20261128T010000Z';
  const L2 = '20261128T020000Z';

  it('stores the second backup as what changed, and restores it exactly', async () => {
    const tiny = await w.addVm('incsave', { running: true, pattern: A, method: 'save', sizeMiB: 128, backupAttributes: ['sstBackupNumberOfIterations: 2'] });
    const vm = tiny.name;
    const disk = tiny.disks[0]!.path;
    await guestWrite(vm, 'vda', A, '32M', '32M');
    await backup(vm, L1);
    await guestWrite(vm, 'vda', P1, '2M', '1M');
    // Leftovers of earlier backups that never finished: one holds only our files, one a stranger's.
    const vmDir = w.layoutOf(vm, L1).vmBackupDir;
    const [ours, foreign] = ['20261127T010000Z', '20261127T020000Z'];
    await mkdir(path.join(vmDir, ours));
    await writeFile(path.join(vmDir, ours, `${path.basename(disk)}.${ours}.partial`), 'half a copy');
    await writeFile(path.join(vmDir, ours, `${vm}.state.${ours}`), 'state');
    await mkdir(path.join(vmDir, foreign));
    await writeFile(path.join(vmDir, foreign, 'notes.txt'), 'not a backup file');
    await backup(vm, L2);
    expect((await readdir(vmDir)).sort()).toEqual([foreign, L1, L2]);
    const first = await imageEntry(vm, L1, disk);
    const second = await imageEntry(vm, L2, disk);
    expect(first.entry.fullReason).toBe('no earlier finished backup of the VM');
    expect(second.entry.backing).toEqual({ leaf: L1, name: path.basename(first.file) });
    expect(second.entry.changesFoundBy).toBe('comparison'); // the save method makes no checkpoints
    expect(second.entry.size).toBeLessThan(4 * MiB);
    await guestWrite(vm, 'vda', P2, '2M', '1M');
    await restore(vm, L2);
    expect(await guestReadMatches(vm, 'vda', P1, '2M', '1M')).toBe(true);
    expect(await guestReadMatches(vm, 'vda', A, '32M', '32M')).toBe(true);
    expect(await backingFileOf(disk)).toBeUndefined();
  });
});

describe('dirty bitmaps are used only when they can be trusted', () => {
  const L1 = '20261127T010000Z';
  const L2 = '20261127T020000Z';
  const L3 = '20261127T030000Z';
  const L4 = '20261127T040000Z';

  it('compares contents without the base\'s checkpoint, uses the bitmap with it, and compares again after a restore', async () => {
    const tiny = await w.addVm('inctrust', { running: true, pattern: A, method: 'live', sizeMiB: 128, backupAttributes: ['sstBackupNumberOfIterations: 4'] });
    const vm = tiny.name;
    const disk = tiny.disks[0]!.path;
    await guestWrite(vm, 'vda', A, '32M', '32M');
    await backup(vm, L1);
    await guestWrite(vm, 'vda', P1, '2M', '1M');
    // Someone dropped the checkpoint's metadata: the bitmap may be there, libvirt no longer vouches for it.
    await execa('virsh', ['-c', w.libvirtUri, 'checkpoint-delete', vm, `stoney-${L1}`, '--metadata']);
    await backup(vm, L2);
    const second = await imageEntry(vm, L2, disk);
    expect([second.entry.backing?.leaf, second.entry.changesFoundBy]).toEqual([L1, 'comparison']);
    expect(await imageMatches(second.file, P1, '2M', '1M')).toBe(true);
    await guestWrite(vm, 'vda', P2, '40M', '1M');
    await backup(vm, L3);
    const third = await imageEntry(vm, L3, disk);
    expect([third.entry.backing?.leaf, third.entry.changesFoundBy]).toEqual([L2, 'bitmap']);
    expect(third.entry.size).toBeLessThan(4 * MiB);
    expect(await imageMatches(third.file, P2, '40M', '1M')).toBe(true);
    expect(await imageMatches(third.file, P1, '2M', '1M')).toBe(true);
    expect(await imageMatches(third.file, A, '41M', '23M')).toBe(true);
    await restore(vm, L2);
    await guestWrite(vm, 'vda', P3, '8M', '1M');
    await backup(vm, L4);
    const fourth = await imageEntry(vm, L4, disk);
    // The base is L3 (the newest finished backup); the restored disk differs from it where L2 and L3 differ.
    expect([fourth.entry.backing?.leaf, fourth.entry.changesFoundBy]).toEqual([L3, 'comparison']);
    expect(await imageMatches(fourth.file, P3, '8M', '1M')).toBe(true);
    expect(await imageMatches(fourth.file, A, '40M', '1M')).toBe(true);
    expect(await imageMatches(fourth.file, P1, '2M', '1M')).toBe(true);
    expect(await checkpointsOf(vm)).toEqual([`stoney-${L4}`]);
  });
});

describe('checkpoints across method switches and a shut-off VM', () => {
  const L1 = '20261126T010000Z';
  const L2 = '20261126T020000Z';
  const L3 = '20261126T030000Z';
  const L4 = '20261126T040000Z';

  it('live, save, live, then shut off: every backup is right and only the newest live backup\'s checkpoint is left', async () => {
    const tiny = await w.addVm('incswitch', { running: true, pattern: A, method: 'live', sizeMiB: 128, backupAttributes: ['sstBackupNumberOfIterations: 4'] });
    const vm = tiny.name;
    const disk = tiny.disks[0]!.path;
    await guestWrite(vm, 'vda', A, '0', '16M');
    await backup(vm, L1);
    await guestWrite(vm, 'vda', P1, '2M', '1M');
    await w.setBackupAttribute(vm, 'sstBackupSnapshotMethod', 'save');
    await backup(vm, L2); // the save method's merge (block pull) with a checkpoint in place
    await guestWrite(vm, 'vda', P2, '4M', '1M');
    await w.setBackupAttribute(vm, 'sstBackupSnapshotMethod', 'live');
    await backup(vm, L3);
    expect(await checkpointsOf(vm)).toEqual([`stoney-${L3}`]);
    await guestWrite(vm, 'vda', P3, '6M', '1M');
    await virsh.destroy(vm);
    await backup(vm, L4);
    expect(await checkpointsOf(vm)).toEqual([`stoney-${L3}`]); // libvirt deletes checkpoints of running VMs only
    for (const [leaf, present] of [[L2, [P1]], [L3, [P1, P2]], [L4, [P1, P2, P3]]] as [string, number[]][]) {
      const { entry, file } = await imageEntry(vm, leaf, disk);
      expect(entry.backing?.leaf, leaf).toBeDefined();
      for (const [i, p] of [P1, P2, P3].entries()) {
        expect(await imageMatches(file, present.includes(p) ? p : A, `${2 * (i + 1)}M`, '1M'), `${leaf} at ${2 * (i + 1)}M`).toBe(true);
      }
    }
  });
});

describe('a node daemon killed while it stored the changes by bitmap', () => {
  const L1 = '20261125T010000Z';
  const L2 = '20261125T020000Z';

  it('is restarted: the merge is redone by bitmap over the half-written image, and the backup holds exactly its moment', async () => {
    const tiny = await w.addVm('inckill', { running: true, pattern: A, method: 'live', sizeMiB: 128, backupAttributes: ['sstBackupNumberOfIterations: 3'] });
    const vm = tiny.name;
    const disk = tiny.disks[0]!.path;
    await guestWrite(vm, 'vda', A, '0', '16M');
    await backup(vm, L1);
    await guestWrite(vm, 'vda', P1, '2M', '1M');
    expect(await w.directory.createLeaf(vm, L2)).toBe(true);
    const dn = (await w.leaf(vm, L2)).dn;
    expect(await w.directory.casMode(dn, 'initialize', 'initialized')).toBe(true);
    expect(await w.directory.casMode(dn, 'initialized', 'snapshot', { state: '0' })).toBe(true);
    expect((await w.waitForMode(vm, L2, ['snapshotted'])).returnValue).toBe(0);
    await w.stopNodeDaemons();
    await guestWrite(vm, 'vda', P2, '4M', '1M'); // after the instant: in the live disk only
    // What a daemon killed in the bitmap copy leaves: the leaf merging, a half-written incremental image.
    expect(await w.directory.casMode(dn, 'snapshotted', 'merging', { state: '0' })).toBe(true);
    const layout = w.layoutOf(vm, L2);
    await mkdir(layout.backupDir, { recursive: true });
    await writeFile(`${layout.backupPath(path.basename(disk))}.partial`, 'half an image');
    await w.startNodeDaemon();
    expect(await w.leaf(vm, L2).then((l) => [l.mode, l.returnValue])).toEqual(['merged', 0]);
    const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm))!], leaf: L2, policy, logger: w.logger });
    expect([done?.mode, done?.returnValue]).toEqual(['finished', 0]);
    const second = await imageEntry(vm, L2, disk);
    expect([second.entry.backing?.leaf, second.entry.changesFoundBy]).toEqual([L1, 'bitmap']);
    expect(await imageMatches(second.file, P1, '2M', '1M')).toBe(true);
    expect(await imageMatches(second.file, A, '4M', '1M')).toBe(true);
    expect(await guestReadMatches(vm, 'vda', P2, '4M', '1M')).toBe(true);
    expect(await backingFileOf(disk)).toBeUndefined();
    const partials = (await readdir(w.root, { recursive: true })).filter((n) => n.endsWith('.partial'));
    expect(partials).toEqual([]);
  });
});
