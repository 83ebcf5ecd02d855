import { describe, expect, it } from 'vitest';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { closeSync, openSync, writeSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { vmDn, type World } from '../helpers/world.js';
import { useWorldWithProgressHook } from '../helpers/useWorld.js';
import { ldapToolArgs } from '../helpers/slapd.js';
import { protocolTimestamp } from '../../src/domain/leafName.js';
import type { NodeDaemon } from '../../src/node/NodeDaemon.js';
import type { StepProgress } from '../../src/node/StepContext.js';
import { backingFileOf, guestReadMatches, guestWrite, virsh } from '../helpers/libvirt.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { runRestore } from '../../src/control/runRestore.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';
import { parseDomainDisks } from '../../src/hypervisor/domainXml.js';
import { allocatedBytes, freeSpaceOf } from '../../src/node/freeSpace.js';
import { readManifest } from '../../src/node/retainStep.js';

/**
 * Node steps that cannot finish leave nothing behind and destroy nothing.
 * Room is checked before a step writes (codes 4 and 47 of the original):
 * filesystems too small for the job are tmpfs mounts of a few hundred KiB
 * put exactly where the step would write. A node that lost its step to the
 * control side prunes nothing.
 */
const A = 0xab;
const B = 0xcd;
const C = 0x5c;
const MiB = 1024 * 1024;
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };

let w: World;
let daemon: NodeDaemon | undefined;
/** Called at each progress report of a node step: lets a test act at an exact point of a copy. */
let onProgress: ((p: StepProgress) => void) | undefined;
useWorldWithProgressHook((x, d) => ((w = x), (daemon = d)), () => onProgress);

/** Write zeros to a new file in `dir` until its filesystem is full. */
function fillUp(dir: string): void {
  const fd = openSync(path.join(dir, 'filler'), 'wx');
  const chunk = Buffer.alloc(64 * 1024, 1);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    closeSync(fd);
  }
}

/** Mount a tmpfs of `size` at `dir` for the duration of `body`. */
async function withSmallFilesystem<T>(dir: string, size: string, body: () => Promise<T>): Promise<T> {
  await mkdir(dir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'stoney-e2e-small', dir]);
  try {
    return await body();
  } finally {
    execFileSync('umount', [dir]);
    await rm(dir, { recursive: true, force: true });
  }
}

describe('a RAM disk and a retain directory without room for the guest memory', () => {
  it.each(['save', 'live'] as const)('fail the %s snapshot with 4 before anything is written; the VM runs on as before', async (method) => {
    const vm = await w.addVm(`ram${method}`, { running: true, pattern: A, method, backupAttributes: [`sstBackupRamDiskLocation: file://${path.join(w.backupRoot, `ramdisk-${method}`)}`] });
    const leaf = '20261122T040000Z';
    const ramDisk = path.join(w.backupRoot, `ramdisk-${method}`);
    const vmRetain = path.dirname(w.layoutOf(vm.name, leaf).retainDir);
    const done = await withSmallFilesystem(ramDisk, '1m', () => withSmallFilesystem(vmRetain, '1m', async () => {
      const [d] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf, policy, logger: w.logger });
      expect(await readdir(ramDisk)).toEqual([]);
      expect(await readdir(vmRetain)).toEqual([]);
      return d;
    }));
    // 32 MiB of guest RAM: neither 1 MiB filesystem has room.
    expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'snapshotted', rv: ReturnCode.notEnoughSpaceOnRamDisk });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await backingFileOf(vm.disks[0]!.path)).toBeUndefined();
    expect(execFileSync('find', [w.backupRoot, '-name', `*${vm.name}*`], { encoding: 'utf8' })).toBe('');
  });
});

describe('a retain filesystem without room for a restore', () => {
  it('fails unretainLargeFiles with 47 before copying; the running VM is untouched', async () => {
    const vm = await w.addVm('unretainfull', { running: true, pattern: A });
    const leaf = '20261122T041000Z';
    await w.backupOk(vm.name, leaf);
    await guestWrite(vm.name, 'vda', B, '2M', '1M');
    const vmRetain = path.dirname(w.layoutOf(vm.name, leaf).retainDir);
    // Room for the XML and LDIF (unretainSmallFiles), not for the state file and the 1 MiB+ image.
    const r = await withSmallFilesystem(vmRetain, '256k', async () => {
      const l = await w.leaf(vm.name, leaf);
      const out = await runRestore({ directory: w.directory, vm: (await w.directory.getVm(vm.name))!, leaf: l, policy, logger: w.logger, pollMs: 100, decide: async () => ({ prefer: 'backup', overrides: {} }) });
      const large = execFileSync('find', [vmRetain, '-type', 'f', '-size', '+64k'], { encoding: 'utf8' });
      expect(large).toBe('');
      return out;
    });
    expect({ outcome: r.outcome, failedAt: r.failedAt }).toEqual({ outcome: 'failed', failedAt: { mode: 'unretainedLargeFiles', returnValue: ReturnCode.notEnoughDiskSpace } });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
  });
});

describe('a backup filesystem that fills up during retain', () => {
  it('fails with 47 and removes what retain copied; the next backup after the leaf is deleted (kvmbackup --force) removes its retain directory', async () => {
    const vm = await w.addVm('midfull', { running: false, pattern: A });
    const leaf = '20261122T042000Z';
    const layout = w.layoutOf(vm.name, leaf);
    const vmBackupDir = path.dirname(layout.backupDir);
    const done = await withSmallFilesystem(vmBackupDir, '8m', async () => {
      // Someone else fills the filesystem when retain has copied the image and the LDIF, and starts on the state file.
      onProgress = (p) => {
        if (p.step === 'retain' && p.vm === vm.name && p.message.includes('.state')) {
          onProgress = undefined;
          fillUp(vmBackupDir);
        }
      };
      try {
        const [d] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf, policy, logger: w.logger });
        expect(await readdir(vmBackupDir)).toEqual(['filler']);
        return d;
      } finally {
        onProgress = undefined;
      }
    });
    expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'retained', rv: ReturnCode.notEnoughDiskSpace });
    // The leaf still exists, so its retain directory stays for a retain issued again.
    expect((await readdir(layout.retainDir)).sort()).toEqual([`${vm.name}.ldif`, `${vm.name}.state`, `${vm.name}.xml`, path.basename(vm.disks[0]!.path)].sort());
    expect(await virsh.domState(vm.name)).toBe('shut off');
    expect(await backingFileOf(vm.disks[0]!.path)).toBeUndefined();

    // kvmbackup --force: the failed leaf is deleted, a new backup runs.
    await w.directory.deleteLeaf(done!.dn);
    const next = '20261123T042000Z';
    const [again] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf: next, policy, logger: w.logger });
    expect({ mode: again?.mode, rv: again?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    expect(await readdir(path.dirname(layout.retainDir))).toEqual([]);
    expect(await readdir(vmBackupDir)).toEqual([next]);
  });

  it('a failed retain keeps its copies until the next backup of the VM starts, which removes them', async () => {
    const vm = await w.addVm('ended47', { running: false, pattern: A });
    const leaf = '20261122T042500Z';
    const layout = w.layoutOf(vm.name, leaf);
    const [failed] = await withSmallFilesystem(path.dirname(layout.backupDir), '256k', async () =>
      runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf, policy, logger: w.logger }));
    expect({ mode: failed?.mode, rv: failed?.returnValue }).toEqual({ mode: 'retained', rv: ReturnCode.notEnoughDiskSpace });
    expect(await readdir(layout.retainDir)).toContain(path.basename(vm.disks[0]!.path));
    // A directory named like a leaf that holds something no backup puts there is not ours to remove.
    const stranger = w.layoutOf(vm.name, '20261101T000000Z').retainDir;
    await mkdir(stranger, { recursive: true });
    await writeFile(path.join(stranger, 'notes.txt'), 'an operator\'s\n');
    const next = '20261123T042500Z';
    const [again] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf: next, policy, logger: w.logger });
    expect({ mode: again?.mode, rv: again?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    expect(await readdir(path.dirname(layout.retainDir))).toEqual(['20261101T000000Z']);
    expect(await readdir(stranger)).toEqual(['notes.txt']);
  });

  it('a deleted leaf whose retain directory the VM still runs on keeps it', async () => {
    const vm = await w.addVm('inuse', { running: true, pattern: A });
    const leaf = '20261122T043000Z';
    expect(await w.directory.createLeaf(vm.name, leaf)).toBe(true);
    const dn = (await w.leaf(vm.name, leaf)).dn;
    expect(await w.directory.casMode(dn, 'initialize', 'initialized', { state: '20261122T000000Z' })).toBe(true);
    expect(await w.directory.casMode(dn, 'initialized', 'snapshot', { state: '0' })).toBe(true);
    expect((await w.waitForMode(vm.name, leaf, ['snapshotted'])).returnValue).toBe(0);
    const retained = w.layoutOf(vm.name, leaf).retainDir;
    // The live method: the guest now writes to an overlay in that retain directory.
    const liveSource = async () => parseDomainDisks(await virsh.dumpXml(vm.name))[0]?.source;
    const sourceBefore = await liveSource();
    expect(path.dirname(sourceBefore!)).toBe(retained);
    const filesBefore = (await readdir(retained)).sort();
    await w.directory.deleteLeaf(dn);
    const [next] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf: '20261123T043000Z', policy, logger: w.logger });
    expect(next?.returnValue).toBe(ReturnCode.chainStillReferencesRetain);
    expect((await readdir(retained)).sort()).toEqual(filesBefore);
    expect(await liveSource()).toBe(sourceBefore);
    expect(await virsh.domState(vm.name)).toBe('running');
  });
});

describe('a backup filesystem without room for a live backup\'s disk image', () => {
  it('fails the merge with 47 before copying the image; the guest runs on its own images again, its writes kept', async () => {
    const vm = await w.addVm('livefull', { running: true, pattern: A, method: 'live', targets: ['vda', 'vdb'] });
    // 48 MiB of data on the disk; the backup filesystem has room for the memory state (32 MiB guest), not for the image too.
    await guestWrite(vm.name, 'vda', B, '1M', '48M');
    const leaf = '20261122T043500Z';
    const layout = w.layoutOf(vm.name, leaf);
    const [done] = await withSmallFilesystem(path.dirname(layout.backupDir), '40m', async () => {
      const r = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf, policy, logger: w.logger });
      // What the failed backup had kept (its memory state) is gone again, and its directory: it restores nothing and takes room.
      expect(await readdir(path.dirname(layout.backupDir))).toEqual([]);
      expect(await readdir(layout.retainDir)).toContain('keep-failed.json');
      return r;
    });
    expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'merged', rv: ReturnCode.notEnoughDiskSpace });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', B, '1M', '48M')).toBe(true);
    // Both overlays committed — the one whose frozen image could not be kept, and the next one,
    // which was not copied any more: no later backup is refused for a guest left in retain.
    const disks = parseDomainDisks(await virsh.dumpXml(vm.name));
    expect(disks.map((d) => [d.target, d.source, d.backingChain])).toEqual(vm.disks.map((d) => [d.target, d.path, []]));
    expect((await readdir(w.layoutOf(vm.name, leaf).retainDir)).filter((n) => n.endsWith('.overlay'))).toEqual([]);
  });
});

describe('a backup filesystem with room for a live backup\'s changes, not for its whole disk', () => {
  it('stores the image incrementally: room is asked for what the dirty bitmap marks, not for the disk', async () => {
    const vm = await w.addVm('liveinc', { running: true, pattern: A, method: 'live', sizeMiB: 128, backupAttributes: ['sstBackupNumberOfIterations: 2'] });
    await guestWrite(vm.name, 'vda', B, '1M', '96M');
    const first = '20261122T043600Z';
    const second = '20261123T043600Z';
    const backups = path.dirname(w.layoutOf(vm.name, first).backupDir);
    const batch = async (leaf: string) => (await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf, policy, logger: w.logger }))[0];
    await withSmallFilesystem(backups, '200m', async () => {
      const one = await batch(first);
      expect({ mode: one?.mode, rv: one?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
      await guestWrite(vm.name, 'vda', C, '20M', '1M');
      // Filled up to the room the memory state asks for (1.05 × the guest's 32 MiB) and 16 MiB
      // more: half of what the whole image (97 MiB allocated) would ask for.
      const image = w.layoutOf(vm.name, first).backupPath(path.basename(vm.disks[0]!.path));
      expect(await allocatedBytes(image)).toBeGreaterThan(96 * MiB);
      const free = await freeSpaceOf(backups);
      const leave = Math.ceil(32 * MiB * 1.05) + 16 * MiB;
      execFileSync('fallocate', ['-l', String(free - leave), path.join(backups, 'filler')]);
      const two = await batch(second);
      expect({ mode: two?.mode, rv: two?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
      const entry = (await readManifest(w.layoutOf(vm.name, second).manifestPath)).files.find((f) => f.name === path.basename(w.layoutOf(vm.name, second).backupPath(path.basename(vm.disks[0]!.path))));
      expect({ base: entry?.backing?.leaf, by: entry?.changesFoundBy }).toEqual({ base: first, by: 'bitmap' });
      expect(entry!.size).toBeLessThan(8 * MiB);
    });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', C, '20M', '1M')).toBe(true);
  });

  it('fails the merge with 47 when even the changes have no room, before QEMU writes; the guest runs on, its writes kept', async () => {
    const vm = await w.addVm('liveinc2', { running: true, pattern: A, method: 'live', backupAttributes: ['sstBackupNumberOfIterations: 2'] });
    const first = '20261122T043700Z';
    const second = '20261123T043700Z';
    const backups = path.dirname(w.layoutOf(vm.name, first).backupDir);
    const batch = async (leaf: string) => (await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf, policy, logger: w.logger }))[0];
    const two = await withSmallFilesystem(backups, '100m', async () => {
      const one = await batch(first);
      expect({ mode: one?.mode, rv: one?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
      await guestWrite(vm.name, 'vda', C, '8M', '48M');
      // Room for what the memory state asks (1.05 × 32 MiB; the state of a guest in firmware
      // takes little of it) and 2 MiB: not for the 48 MiB the bitmap marks.
      execFileSync('fallocate', ['-l', String((await freeSpaceOf(backups)) - Math.ceil(32 * MiB * 1.05) - 2 * MiB), path.join(backups, 'filler')]);
      const r = await batch(second);
      // Nothing of the failed backup stays: no partial image, not even its memory state or directory.
      expect((await readdir(backups)).sort()).toEqual([first, 'filler']);
      return r;
    });
    expect({ mode: two?.mode, rv: two?.returnValue }).toEqual({ mode: 'merged', rv: ReturnCode.notEnoughDiskSpace });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', C, '8M', '48M')).toBe(true);
    const third = await batch('20261124T043700Z');
    expect({ mode: third?.mode, rv: third?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    expect(parseDomainDisks(await virsh.dumpXml(vm.name))[0]?.source).toBe(vm.disks[0]!.path);
  });
});

describe('a backup filesystem that fills up while a live snapshot keeps the memory state', () => {
  it('fails the snapshot with 24 and folds the overlays back at once; the next backup finishes', async () => {
    const vm = await w.addVm('livestate', { running: true, pattern: A, method: 'live', targets: ['vda', 'vdb'] });
    const leaf = '20261122T043800Z';
    const layout = w.layoutOf(vm.name, leaf);
    const backups = path.dirname(layout.backupDir);
    // Room when the snapshot starts; filled up (by someone else) as the state is copied, after the guest moved onto overlays.
    onProgress = (p) => {
      if (p.vm === vm.name && p.step === 'snapshot' && p.message.startsWith('keeping')) {
        onProgress = undefined;
        fillUp(backups);
      }
    };
    const done = await withSmallFilesystem(backups, '40m', async () => (await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf, policy, logger: w.logger }))[0]).finally(() => (onProgress = undefined));
    expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'snapshotted', rv: ReturnCode.cannotCopyStateFileToRetain });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(parseDomainDisks(await virsh.dumpXml(vm.name)).map((d) => [d.target, d.source, d.backingChain])).toEqual(vm.disks.map((d) => [d.target, d.path, []]));
    await guestWrite(vm.name, 'vdb', B, '2M', '1M');
    const [next] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf: '20261123T043800Z', policy, logger: w.logger });
    expect({ mode: next?.mode, rv: next?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    expect(await guestReadMatches(vm.name, 'vdb', B, '2M', '1M')).toBe(true);
  });
});

describe('a retain that finds a disk of the backup neither in retain nor kept', () => {
  it('refuses with 37 rather than finish a backup without that disk', async () => {
    const vm = await w.addVm('lostkeep', { running: true, pattern: A, method: 'live', targets: ['vda', 'vdb'] });
    const leaf = '20261122T043900Z';
    const dn = await w.startSnapshot(vm.name, leaf);
    expect((await w.waitForMode(vm.name, leaf, ['snapshotted'])).returnValue).toBe(0);
    expect(await w.directory.casMode(dn, 'snapshotted', 'merge', { state: '0' })).toBe(true);
    expect((await w.waitForMode(vm.name, leaf, ['merged'])).returnValue).toBe(0);
    // As if a merge had reported success without keeping vdb's frozen image.
    const layout = w.layoutOf(vm.name, leaf);
    const vdb = path.basename(vm.disks[1]!.path);
    await rm(layout.keptRecordPath(vdb));
    await rm(layout.backupPath(vdb));
    expect(await w.directory.casMode(dn, 'merged', 'retain', { state: '0' })).toBe(true);
    const retained = await w.waitForMode(vm.name, leaf, ['retained']);
    expect(retained.returnValue).toBe(ReturnCode.missingNecessaryFiles);
    await expect(stat(layout.manifestPath)).rejects.toThrow(/ENOENT/);
  });
});

describe('a retain the control side timed out meanwhile', () => {
  it('keeps the backup it made but prunes no older one', async () => {
    const vm = await w.addVm('lostowner', { running: false, pattern: A, backupAttributes: ['sstBackupNumberOfIterations: 1'] });
    const older = '20261122T044000Z';
    const leaf = '20261123T044000Z';
    await w.backupOk(vm.name, older);
    // While retain copies, the control side's step timeout fires and moves the
    // leaf on (49): written synchronously, so the step goes on only after it.
    let moved = false;
    onProgress = (p) => {
      if (p.step === 'retain' && p.vm === vm.name && !moved) {
        onProgress = undefined;
        moved = true;
        const ldif = `dn: ou=${leaf},ou=backup,${vmDn(vm.name)}\nchangetype: modify\nreplace: sstProvisioningMode\nsstProvisioningMode: retained\n-\nreplace: sstProvisioningReturnValue\nsstProvisioningReturnValue: ${ReturnCode.stepTimedOut}\n-\nreplace: sstProvisioningState\nsstProvisioningState: ${protocolTimestamp()}\n`;
        execFileSync('/usr/bin/ldapmodify', ldapToolArgs(w.slapd), { input: ldif });
      }
    };
    try {
      const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf, policy, logger: w.logger });
      expect(moved).toBe(true);
      expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'retained', rv: ReturnCode.stepTimedOut });
    } finally {
      onProgress = undefined;
    }
    await daemon!.idle();
    const vmBackupDir = path.dirname(w.layoutOf(vm.name, leaf).backupDir);
    expect((await readdir(vmBackupDir)).sort()).toEqual([older, leaf]);
    expect(await readdir(w.layoutOf(vm.name, older).backupDir)).toContain('manifest.json');
    expect(await readdir(w.layoutOf(vm.name, leaf).backupDir)).toContain('manifest.json');
  });
});
