import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { World } from '../helpers/world.js';
import { backingFileOf, virsh } from '../helpers/libvirt.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

/**
 * Reproductions 2 and 7 of issue #10 through the node daemon: backup
 * settings a directory writer controls (roots, RAM disk, modes) that point
 * outside what the node allows are refused with their code before anything
 * is touched — the VM keeps running on its own image and the named
 * directories stay as they were.
 */
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };
let w: World;
let elsewhere: string;

beforeAll(async () => {
  w = await World.start();
  elsewhere = path.join(w.root, 'elsewhere');
  await mkdir(elsewhere);
  await w.startNodeDaemon();
});
afterAll(async () => {
  await w?.cleanup();
});

async function tree(): Promise<string> {
  return (await execa('find', [w.root, '-printf', '%p %y %s %m\n'])).stdout.split('\n').filter((l) => !l.startsWith(`${w.runDir}`)).sort().join('\n');
}

describe('backup settings outside what the node allows', () => {
  it.each([
    ['a backup root outside STONEY_ALLOWED_ROOTS', () => `sstBackupRootDirectory: file://${elsewhere}`, ReturnCode.directoryNotAllowed],
    ['a retain directory in /etc', () => 'sstBackupRetainDirectory: file:///etc', ReturnCode.directoryNotAllowed],
    ['a backup root climbing out with ..', () => `sstBackupRootDirectory: file://${w.backupRoot}/../elsewhere`, ReturnCode.directoryNotAllowed],
    ['a RAM disk in /tmp', () => 'sstBackupRamDiskLocation: file:///tmp', ReturnCode.directoryNotAllowed],
    ['a setuid image mode', () => 'sstVirtualizationDiskImagePermission: 4755', ReturnCode.unsupportedConfigurationParameter],
    ['a setgid directory mode', () => 'sstVirtualizationDiskImageDirectoryPermission: 2777', ReturnCode.unsupportedConfigurationParameter],
  ])('refuses %s before touching anything', async (_what, setting, code) => {
    const vm = await w.addVm(`hs${code}${Math.floor(Math.random() * 1e4)}`, { running: true, backupAttributes: [setting()] });
    const before = await tree();
    const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf: '20261122T070000Z', policy, logger: w.logger });
    expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'snapshotted', rv: code });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await backingFileOf(vm.disks[0]!.path)).toBeUndefined();
    expect(await tree()).toBe(before);
  });
});
