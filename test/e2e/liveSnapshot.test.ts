import { beforeAll, describe, expect, it } from 'vitest';
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { restoreFromBackupFiles } from '../helpers/backupFiles.js';
import { World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { backingFileOf, guestReadMatches, guestWrite, imageMatches, virsh } from '../helpers/libvirt.js';
import { BackupLayout } from '../../src/domain/layout.js';
import { digestKindOf, fileDigest, recordedDigest } from '../../src/node/fileDigest.js';
import { parseDomainDisks } from '../../src/hypervisor/domainXml.js';
import { parseLifecycleEvents } from '../../src/hypervisor/lifecycleEvents.js';
import { run } from '../../src/hypervisor/exec.js';
import type { LeafEntry } from '../../src/directory/types.js';
import type { BackupManifest } from '../../src/node/retainStep.js';

/**
 * The live snapshot method (sstBackupSnapshotMethod: live): memory and disks
 * captured at one instant while the guest runs, merged by an active block
 * commit. Asserted on the world: what the backup holds, what the guest sees,
 * the chains, the files, and libvirt's own lifecycle events.
 */
const A = 0xab;
const B = 0xcd;
const NODE2 = 'node-02.example.com';
const vmStorageGid = Number(execFileSync('getent', ['group', 'vm-storage']).toString().split(':')[2]);

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

const layoutOf = (vm: string, leaf: string): BackupLayout => w.layoutOf(vm, leaf);

const startSnapshot = (vm: string, leaf: string): Promise<string> => w.startSnapshot(vm, leaf);
const finishBackup = (vm: string, leaf: string): Promise<LeafEntry> => w.finishBackup(vm, leaf);
const leftovers = (): Promise<string[]> => w.stepLeftovers();

async function liveChain(vm: string): Promise<[string, string | undefined, string[]][]> {
  return parseDomainDisks(await virsh.dumpXml(vm)).map((d) => [d.target, d.source, d.backingChain]);
}

describe('live backup of a running VM with two disks', () => {
  const leaf = '20261129T030000Z';
  let vm: string;
  let images: string[];
  let result: LeafEntry;
  let events: string;
  let downtimeLimitBefore: number;

  beforeAll(async () => {
    const tiny = await w.addVm('live2', { targets: ['vda', 'vdb'], running: true, pattern: A, method: 'live' });
    vm = tiny.name;
    downtimeLimitBefore = await virsh.maxDowntimeMs(vm);
    images = tiny.disks.map((d) => d.path);
    const watch = await virsh.watchLifecycle(vm, 120_000);
    await startSnapshot(vm, leaf);
    const snap = await w.waitForMode(vm, leaf, ['snapshotted']);
    events = await watch.stop();
    expect(snap.returnValue).toBe(0);
    // After the snapshot instant the guest writes B: it must reach the live disks only.
    await guestWrite(vm, 'vda', B, '2M', '1M');
    await guestWrite(vm, 'vdb', B, '2M', '1M');
    result = await finishBackup(vm, leaf);
  });

  it('finishes with return value 0 and reports the stopped window', () => {
    expect({ mode: result.mode, rv: result.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    expect(Object.keys(result.executionTime).sort()).toEqual(['downtime', 'merge', 'retain', 'snapshot']);
  });

  it('leaves the domain\'s migration downtime limit as it found it (it is tightened only during the snapshot)', async () => {
    expect(await virsh.maxDowntimeMs(vm)).toBe(downtimeLimitBefore);
  });

  it('never stopped the guest: libvirt saw only a pause and a resume, no save and no restore', () => {
    const kinds = parseLifecycleEvents(events).map((e) => e.text.replace(/^.*': /, ''));
    expect(kinds).toEqual(['Suspended Paused', 'Resumed Unpaused']);
  });

  it('keeps the VM running on its own flat images, seeing the old and the new data', async () => {
    expect(await virsh.domState(vm)).toBe('running');
    expect(await virsh.domStateReason(vm)).not.toMatch(/restored/);
    expect(await liveChain(vm)).toEqual([
      ['vda', images[0], []],
      ['vdb', images[1], []],
    ]);
    for (const img of images) expect(await backingFileOf(img)).toBeUndefined();
    for (const t of ['vda', 'vdb']) {
      expect(await guestReadMatches(vm, t, A, '0', '1M')).toBe(true);
      expect(await guestReadMatches(vm, t, B, '2M', '1M')).toBe(true);
    }
    // The persistent definition names the images again, not the overlays.
    expect(parseDomainDisks(await virsh.dumpXml(vm, { inactive: true })).map((d) => d.source)).toEqual(images);
  });

  it('stores point-in-time images: the data of the snapshot instant, none of the later writes', async () => {
    const layout = layoutOf(vm, leaf);
    for (const img of images) {
      const backupImage = layout.backupPath(path.basename(img));
      expect(await backingFileOf(backupImage)).toBeUndefined();
      expect(await imageMatches(backupImage, A, '0', '1M')).toBe(true);
      expect(await imageMatches(backupImage, 0, '2M', '1M')).toBe(true);
    }
  });

  it('writes the seed layout with a manifest, owner and mode as configured, and leaves no overlay, partial or retain copy', async () => {
    const layout = layoutOf(vm, leaf);
    const manifest = JSON.parse(await readFile(layout.manifestPath, 'utf8')) as BackupManifest;
    expect(manifest.files.map((f) => f.name).sort()).toEqual(
      [`${vm}-vda.qcow2.${leaf}`, `${vm}-vdb.qcow2.${leaf}`, `${vm}.ldif.${leaf}`, `${vm}.state.${leaf}`, `${vm}.xml.${leaf}`].sort(),
    );
    expect((await readdir(layout.backupDir)).sort()).toEqual([...manifest.files.map((f) => f.name), 'manifest.json'].sort());
    for (const f of manifest.files) {
      const file = path.join(layout.backupDir, f.name);
      const real = await fileDigest(file);
      const s = await stat(file);
      expect({ file: f.name, size: real.size, sha256PerMiB: real.sha256PerMiB, mode: s.mode & 0o777, gid: s.gid }).toEqual({ file: f.name, size: f.size, sha256PerMiB: f.sha256PerMiB, mode: 0o640, gid: vmStorageGid });
    }
    await expect(stat(layout.retainDir)).rejects.toThrow(/ENOENT/);
    expect(await leftovers()).toEqual([]);
  });

  it('has a memory state that virsh restore brings back, with the backup disks, at the snapshot instant', async () => {
    await restoreFromBackupFiles(vm, layoutOf(vm, leaf), images, w.root);
    expect(await virsh.domStateReason(vm)).toMatch(/running \(restored\)/);
    for (const t of ['vda', 'vdb']) {
      expect(await guestReadMatches(vm, t, A, '0', '1M')).toBe(true);
      expect(await guestReadMatches(vm, t, 0, '2M', '1M')).toBe(true);
    }
  });
});

describe('the save method, chosen on the VM', () => {
  it('still saves and restores the guest (the seed\'s way) and keeps the same files', async () => {
    const tiny = await w.addVm('save1', { running: true, pattern: A, method: 'save' });
    const leaf = '20261129T031000Z';
    const watch = await virsh.watchLifecycle(tiny.name, 120_000);
    await startSnapshot(tiny.name, leaf);
    expect((await w.waitForMode(tiny.name, leaf, ['snapshotted'])).returnValue).toBe(0);
    const kinds = parseLifecycleEvents(await watch.stop()).map((e) => e.text.replace(/^.*': /, ''));
    expect(kinds).toContain('Stopped Saved');
    expect(kinds).toContain('Started Restored');
    await guestWrite(tiny.name, 'vda', B, '2M', '1M');
    const done = await finishBackup(tiny.name, leaf);
    expect({ mode: done.mode, rv: done.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    const backupImage = layoutOf(tiny.name, leaf).backupPath(path.basename(tiny.disks[0]!.path));
    expect(await imageMatches(backupImage, A, '0', '1M')).toBe(true);
    expect(await imageMatches(backupImage, 0, '2M', '1M')).toBe(true);
    expect(await guestReadMatches(tiny.name, 'vda', B, '2M', '1M')).toBe(true);
    expect(await liveChain(tiny.name)).toEqual([['vda', tiny.disks[0]!.path, []]]);
  });
});

describe('a node daemon killed during a live backup, then restarted', () => {
  /**
   * A VM on NODE2 snapshotted live by a daemon that is then stopped: the world
   * a kill leaves behind, before the report or during the merge.
   */
  async function liveSnapshotted(short: string, leaf: string) {
    await w.stopNodeDaemons();
    const tiny = await w.addVm(short, { running: true, pattern: A, node: NODE2 });
    await w.startNodeDaemon(NODE2);
    const dn = await startSnapshot(tiny.name, leaf);
    expect((await w.waitForMode(tiny.name, leaf, ['snapshotted'])).returnValue).toBe(0);
    await w.stopNodeDaemons(); // what a kill leaves: no daemon, the world as the step left it
    const img = tiny.disks[0]!.path;
    const overlay = layoutOf(tiny.name, leaf).retainPath(`${path.basename(img)}.overlay`);
    expect(await liveChain(tiny.name)).toEqual([['vda', overlay, [img]]]);
    await guestWrite(tiny.name, 'vda', B, '2M', '1M'); // after the instant: must survive everything below
    return { vm: tiny.name, img, dn, overlay, layout: layoutOf(tiny.name, leaf) };
  }

  /** Start NODE2's daemon again (recovery runs at start) and check how the interrupted step ended; the daemon keeps running for the rest of the backup. */
  async function restartAndExpect(vm: string, leaf: string, mode: string, rv: number): Promise<void> {
    await w.startNodeDaemon(NODE2);
    const l = await w.leaf(vm, leaf);
    expect({ mode: l.mode, rv: l.returnValue }).toEqual({ mode, rv });
  }

  async function expectGuestIntact(vm: string, img: string): Promise<void> {
    expect(await virsh.domState(vm)).toBe('running');
    expect(await liveChain(vm)).toEqual([['vda', img, []]]);
    expect(await backingFileOf(img)).toBeUndefined();
    expect(await guestReadMatches(vm, 'vda', A, '0', '1M')).toBe(true);
    expect(await guestReadMatches(vm, 'vda', B, '2M', '1M')).toBe(true);
  }

  it('killed after the snapshot, before its report: the overlay is committed, nothing the guest wrote is lost, the step fails with 50', async () => {
    const leaf = '20261129T040000Z';
    const c = await liveSnapshotted('killsnap', leaf);
    expect(await w.directory.casMode(c.dn, 'snapshotted', 'snapshotting')).toBe(true);
    await restartAndExpect(c.vm, leaf, 'snapshotted', 50);
    await expectGuestIntact(c.vm, c.img);
    await expect(stat(c.layout.retainDir)).rejects.toThrow(/ENOENT/);
    expect(await leftovers()).toEqual([]);
  });

  it('killed in the merge before the frozen copy was complete: the merge is finished, the backup holds the snapshot instant', async () => {
    const leaf = '20261129T041000Z';
    const c = await liveSnapshotted('killcopy', leaf);
    expect(await w.directory.casMode(c.dn, 'snapshotted', 'merging', { state: '0' })).toBe(true);
    await mkdir(c.layout.backupDir, { recursive: true });
    await writeFile(`${c.layout.backupPath(path.basename(c.img))}.partial`, 'half a copy');
    await restartAndExpect(c.vm, leaf, 'merged', 0);
    await expectGuestIntact(c.vm, c.img);
    const done = await finishBackup(c.vm, leaf);
    expect({ mode: done.mode, rv: done.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    const backupImage = c.layout.backupPath(path.basename(c.img));
    expect(await imageMatches(backupImage, A, '0', '1M')).toBe(true);
    expect(await imageMatches(backupImage, 0, '2M', '1M')).toBe(true);
    expect(await leftovers()).toEqual([]);
  });

  it('killed while libvirt still runs its block commit: the job is taken over and pivoted, not started twice', async () => {
    const leaf = '20261129T042000Z';
    const c = await liveSnapshotted('killcommit', leaf);
    expect(await w.directory.casMode(c.dn, 'snapshotted', 'merging', { state: '0' })).toBe(true);
    // What the dead daemon had done: the frozen copy (with its record), then a commit that libvirt keeps running.
    const kept = c.layout.backupPath(path.basename(c.img));
    await mkdir(c.layout.backupDir, { recursive: true });
    await copyFile(c.img, kept);
    await writeFile(c.layout.keptRecordPath(path.basename(c.img)), JSON.stringify({ name: path.basename(kept), ...(await fileDigest(kept)) }));
    await run('virsh', ['-c', w.libvirtUri, 'blockcommit', c.vm, 'vda', '--active']);
    await restartAndExpect(c.vm, leaf, 'merged', 0);
    await expectGuestIntact(c.vm, c.img);
    expect(await virsh.blockJob(c.vm, 'vda')).toBeUndefined();
    const done = await finishBackup(c.vm, leaf);
    expect({ mode: done.mode, rv: done.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    expect(await imageMatches(c.layout.backupPath(path.basename(c.img)), 0, '2M', '1M')).toBe(true);
    expect(await leftovers()).toEqual([]);
  });

  it('killed in the retain copy: the copy is redone from retain and the kept image, and the backup is complete', async () => {
    const leaf = '20261129T043000Z';
    const c = await liveSnapshotted('killretain', leaf);
    await w.startNodeDaemon(NODE2);
    expect(await w.directory.casMode(c.dn, 'snapshotted', 'merge', { state: '0' })).toBe(true);
    expect((await w.waitForMode(c.vm, leaf, ['merged'])).returnValue).toBe(0);
    await w.stopNodeDaemons();
    expect(await w.directory.casMode(c.dn, 'merged', 'retaining', { state: '0' })).toBe(true);
    await writeFile(`${c.layout.backupPath(`${c.vm}.xml`)}.partial`, 'half an XML file');
    await writeFile(`${c.layout.backupPath(`${c.vm}.state`)}.partial`, 'a stale partial of an earlier try');
    await restartAndExpect(c.vm, leaf, 'retained', 0);
    const manifest = JSON.parse(await readFile(c.layout.manifestPath, 'utf8')) as BackupManifest;
    expect((await readdir(c.layout.backupDir)).sort()).toEqual([...manifest.files.map((f) => f.name), 'manifest.json'].sort());
    for (const f of manifest.files) expect(await fileDigest(path.join(c.layout.backupDir, f.name), digestKindOf(f))).toEqual(recordedDigest(f));
    expect(await imageMatches(c.layout.backupPath(path.basename(c.img)), 0, '2M', '1M')).toBe(true);
    await expectGuestIntact(c.vm, c.img);
    expect(await leftovers()).toEqual([]);
  });
});
