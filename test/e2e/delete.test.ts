import { describe, expect, it } from 'vitest';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { BackupLayout } from '../../src/domain/layout.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { runDelete } from '../../src/control/runDelete.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { digestKindOf, fileDigest, recordedDigest } from '../../src/node/fileDigest.js';
import type { BackupManifest } from '../../src/node/retainStep.js';

const A = 0xab;
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };
const CLI = path.resolve('bin/stoney-backup.js');

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

async function layoutOf(vm: string, leaf: string): Promise<BackupLayout> {
  const entry = (await w.directory.getVm(vm))!;
  const settings = (await w.directory.effectiveSettings(entry)).backup;
  const disk = entry.disks[0]!.sourceFile!;
  const [vmType, pool] = path.relative(w.imageRoot, path.dirname(disk)).split(path.sep);
  return new BackupLayout({ rootDirectory: settings.rootDirectory, retainDirectory: settings.retainDirectory, vmType: vmType!, pool: pool!, vm, leaf });
}

async function backup(vm: string, leaf: string): Promise<void> {
  const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm))!], leaf, policy, logger: w.logger });
  expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
}

/** Every file of the backup directory is what its manifest says (nothing of it was touched). */
async function expectIntact(layout: BackupLayout): Promise<void> {
  const manifest = JSON.parse(await readFile(layout.manifestPath, 'utf8')) as BackupManifest;
  expect(manifest.files.map((f) => f.name).sort()).toEqual((await readdir(layout.backupDir)).filter((n) => n !== 'manifest.json').sort());
  for (const f of manifest.files) expect(await fileDigest(path.join(layout.backupDir, f.name), digestKindOf(f))).toEqual(recordedDigest(f));
}

async function writeDelete(vm: string, leaf: string, from = 'finished'): Promise<void> {
  // What the original control instance and web UI write: the command with state 0.
  expect(await w.directory.casMode((await w.leaf(vm, leaf)).dn, from, 'delete', { state: '0' })).toBe(true);
}

const cliEnv = () => w.cliEnv();

describe('delete written on a finished leaf (as the original web UI does)', () => {
  it('the node answers deleting → deleted 0, removes only that backup\'s files, and leaves the leaf to the control side', async () => {
    const vm = (await w.addVm('del', { running: false, pattern: A, backupAttributes: ['sstBackupNumberOfIterations: 3'] })).name;
    const [old, kept] = ['20261123T010000Z', '20261123T020000Z'];
    await backup(vm, old);
    await backup(vm, kept);
    const oldLayout = await layoutOf(vm, old);
    expect((await readdir(oldLayout.backupDir)).length).toBeGreaterThanOrEqual(5);

    await writeDelete(vm, old);
    const done = await w.waitForMode(vm, old, ['deleted']);
    expect(done.returnValue).toBe(0);
    expect(done.state).toMatch(/^\d{8}T\d{6}Z$/);
    expect(await readdir(oldLayout.vmBackupDir)).toEqual([kept]);
    await expectIntact(await layoutOf(vm, kept));
    // The node never removes the leaf: that is the control side's turn.
    expect((await w.leaf(vm, old)).mode).toBe('deleted');
  });

  it('a node daemon that died in deleting runs the delete again when it starts, and finishes it', async () => {
    // Whole backups: the simulated half delete removes files without the fold a real delete does first.
    const vm = (await w.addVm('delrerun', { running: false, pattern: A, method: 'live', backupAttributes: ['sstBackupNumberOfIterations: 3', 'sstBackupFullEvery: 1'] })).name;
    const [old, kept] = ['20261123T050000Z', '20261123T060000Z'];
    await backup(vm, old);
    await backup(vm, kept);
    const oldLayout = await layoutOf(vm, old);
    // The daemon claimed the delete, removed the manifest and one file, then died.
    await w.stopNodeDaemons();
    try {
      await writeDelete(vm, old);
      expect(await w.directory.casMode((await w.leaf(vm, old)).dn, 'delete', 'deleting')).toBe(true);
      const files = (await readdir(oldLayout.backupDir)).filter((n) => n !== 'manifest.json');
      await execa('rm', [oldLayout.manifestPath, path.join(oldLayout.backupDir, files[0]!)]);
    } finally {
      await w.startNodeDaemon();
    }
    const done = await w.waitForMode(vm, old, ['deleted']);
    expect(done.returnValue).toBe(0);
    expect(await readdir(oldLayout.vmBackupDir)).toEqual([kept]);
    await expectIntact(await layoutOf(vm, kept));
  });

  it('refuses with 57 while another workflow of the VM is in progress, touching nothing; a later delete succeeds', async () => {
    const vm = (await w.addVm('delbusy', { running: false, pattern: A, backupAttributes: ['sstBackupNumberOfIterations: 3'] })).name;
    const leaf = '20261123T030000Z';
    const active = '20261123T040000Z';
    await backup(vm, leaf);
    expect(await w.directory.createLeaf(vm, active)).toBe(true); // a backup that has begun (initialize)
    await writeDelete(vm, leaf);
    const refused = await w.waitForMode(vm, leaf, ['deleted']);
    expect(refused.returnValue).toBe(57);
    await expectIntact(await layoutOf(vm, leaf));

    await w.directory.deleteLeaf((await w.leaf(vm, active)).dn);
    const result = await runDelete({ directory: w.directory, leaf: await w.leaf(vm, leaf), policy, logger: w.logger, pollMs: 100 });
    expect({ outcome: result.outcome, rv: result.leaf.returnValue, removed: result.leafRemoved }).toEqual({ outcome: 'deleted', rv: 0, removed: true });
    expect((await w.directory.listLeaves(vm)).map((l) => l.leaf)).toEqual([]);
    expect(await readdir((await layoutOf(vm, leaf)).vmBackupDir)).toEqual([]);
  });
});

describe('the delete command', () => {
  it('deletes the backup and removes its leaf (exit 0, JSON outcome)', async () => {
    const vm = (await w.addVm('delcli', { running: true, pattern: A, backupAttributes: ['sstBackupNumberOfIterations: 3'] })).name;
    const [first, second] = ['20261123T050000Z', '20261123T060000Z'];
    await backup(vm, first);
    await backup(vm, second);
    const r = await execa('node', [CLI, 'delete', vm, first, '--json'], { env: cliEnv(), reject: false });
    expect({ code: r.exitCode, out: JSON.parse(r.stdout) as unknown }).toEqual({
      code: 0,
      out: { vm, leaf: first, outcome: 'deleted', returnValue: 0, returnText: 'success', leafRemoved: true },
    });
    expect((await w.directory.listLeaves(vm)).map((l) => l.leaf)).toEqual([second]);
    const layout = await layoutOf(vm, second);
    expect(await readdir(layout.vmBackupDir)).toEqual([second]);
    await expectIntact(layout);
    expect(await w.directory.getVm(vm)).toBeDefined();
  });

  it('reports 13 when the backup directory holds a file that is not the backup\'s: that file stays, the leaf stays at deleted', async () => {
    const vm = (await w.addVm('delforeign', { running: false, pattern: A })).name;
    const leaf = '20261123T070000Z';
    await backup(vm, leaf);
    const layout = await layoutOf(vm, leaf);
    await writeFile(path.join(layout.backupDir, 'notes.txt'), 'the admin\'s notes\n');
    const r = await execa('node', [CLI, 'delete', vm, leaf], { env: cliEnv(), reject: false });
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toBe(`${vm}: delete of ${leaf} FAILED with return value 13 (cannot remove file); the leaf stays at deleted`);
    expect(await readdir(layout.backupDir)).toEqual(['notes.txt']);
    expect(await readFile(path.join(layout.backupDir, 'notes.txt'), 'utf8')).toBe('the admin\'s notes\n');
    const l = await w.leaf(vm, leaf);
    expect({ mode: l.mode, rv: l.returnValue }).toEqual({ mode: 'deleted', rv: 13 });
  });

  it('refuses a backup that is not finished, changing nothing', async () => {
    const vm = (await w.addVm('delnf', { running: false, pattern: A })).name;
    const leaf = '20261123T080000Z';
    expect(await w.directory.createLeaf(vm, leaf)).toBe(true);
    const r = await execa('node', [CLI, 'delete', vm, leaf], { env: cliEnv(), reject: false });
    expect({ code: r.exitCode, err: r.stderr }).toEqual({ code: 1, err: expect.stringContaining('only a finished backup') as unknown });
    expect((await w.leaf(vm, leaf)).mode).toBe('initialize');
  });
});
