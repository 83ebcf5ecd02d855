import { describe, expect, it } from 'vitest';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { backingFileOf, guestReadMatches, guestWrite, virsh } from '../helpers/libvirt.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { runRestore } from '../../src/control/runRestore.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

/**
 * Room is checked before a step writes (codes 4 and 47 of the original):
 * filesystems too small for the job are tmpfs mounts of a few hundred KiB
 * put exactly where the step would write.
 */
const A = 0xab;
const B = 0xcd;
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

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
