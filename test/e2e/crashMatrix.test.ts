/**
 * Issue 9's crash matrix, the cases not covered elsewhere (stepSafety,
 * liveSnapshot, restoreCrash, longJobs): a backup whose node daemon, directory
 * or libvirtd goes away in the middle of a step. Each case ends with the leaf
 * at a return code, the VM running on its own flat images with everything the
 * guest wrote before and after, and no overlay, block job, state file or
 * retain copy left behind.
 *
 * Real slapd, libvirt/QEMU. The node daemon that is killed (SIGKILL, no
 * clean-up runs, as after a power loss) is the real `stoney-backup node` in a
 * child process, killed by itself at a fault point (STONEY_TEST_FAULT); the
 * others run in-process with a progress hook that acts at an exact moment.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, open, readdir, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import type { World } from '../helpers/world.js';
import { useWorldWithProgressHook } from '../helpers/useWorld.js';
import { backingFileOf, guestReadMatches, guestWrite, imageMatches, restartLibvirtd, virsh, type TinyVm } from '../helpers/libvirt.js';
import type { StepProgress } from '../../src/node/StepContext.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';
import { parseDomainDisks } from '../../src/hypervisor/domainXml.js';
import { run } from '../../src/hypervisor/exec.js';

const A = 0xab;
const B = 0xcd;
const C = 0x5a;
const CLI = path.resolve('bin/stoney-backup.js');
const exists = (f: string) => stat(f).then(() => true, () => false);
/** VMs whose node daemon is the CLI child (node-01 is the in-process one). */
const NODE2 = 'node-02.example.com';

let w: World;
/** Called at each progress report of node-01's daemon (in-process) steps. */
let onProgress: ((p: StepProgress) => void) | undefined;
useWorldWithProgressHook((x) => (w = x), () => onProgress);
beforeAll(async () => {
  await stat('dist/src/cli/main.js').catch(() => {
    throw new Error('dist/ is missing: run `npm run build` (the test command does) before the e2e tests');
  });
});

/** CLI node daemons a test started: stopped after it whatever happened; one still running must stop cleanly. */
const children: ResultPromise<{ reject: false }>[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) {
    if (c.exitCode !== null || c.signalCode !== null) continue;
    c.kill('SIGTERM');
    const r = await c;
    expect({ code: r.exitCode, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  }
});

/** `stoney-backup node` for NODE2 in a child process; with `fault`, it kills itself at that point. */
function cliNodeDaemon(fault?: string): ResultPromise<{ reject: false }> {
  const child = execa('node', [CLI, 'node'], {
    reject: false,
    env: {
      ...w.cliEnv(), STONEY_NODE_NAME: NODE2, STONEY_RUN_DIR: w.runDir, STONEY_CHANGE_FEED: 'poll', STONEY_POLL_INTERVAL_MS: '150',
      STONEY_LOG_LEVEL: process.env.STONEY_TEST_LOG ?? 'warn', ...(fault ? { STONEY_TEST_FAULT: fault } : {}),
    },
  });
  children.push(child);
  return child;
}

/** Whatever retain still holds for the VM (nothing, once a backup ended or failed cleanly). */
async function retainedFiles(vm: string): Promise<string[]> {
  const dir = path.dirname(w.layoutOf(vm, '20261130T000000Z').retainDir);
  const out = (await run('find', [dir, '-type', 'f'], { okExitCodes: [0, 1] })).stdout.trim();
  return out === '' ? [] : out.split('\n');
}

/** The VM runs on its own flat images, sees every pattern, and libvirt runs no job on it. */
async function expectIntact(vm: TinyVm, patterns: [number, string][]): Promise<void> {
  expect(await virsh.domState(vm.name)).toBe('running');
  expect(parseDomainDisks(await virsh.dumpXml(vm.name)).map((d) => [d.target, d.source, d.backingChain])).toEqual(vm.disks.map((d) => [d.target, d.path, []]));
  expect(parseDomainDisks(await virsh.dumpXml(vm.name, { inactive: true })).map((d) => d.source)).toEqual(vm.disks.map((d) => d.path));
  for (const d of vm.disks) {
    expect(await backingFileOf(d.path)).toBeUndefined();
    expect(await virsh.blockJob(vm.name, d.target)).toBeUndefined();
    for (const [pattern, offset] of patterns) expect({ disk: d.target, offset, matches: await guestReadMatches(vm.name, d.target, pattern, offset, '1M') }).toEqual({ disk: d.target, offset, matches: true });
  }
  expect(await virsh.domainJobActive(vm.name)).toBe(false);
}

describe('the save method: the node daemon killed (SIGKILL) in the snapshot, then started again', () => {
  /**
   * A VM on NODE2 whose snapshot the CLI daemon runs until `fault` kills it;
   * then a new daemon starts (its recovery runs first): the leaf must end the
   * snapshot with 50, the VM run intact, and its next backup go through.
   */
  async function killedSnapshotThenNextBackup(vm: TinyVm, leaf: string, next: string, fault: string, restoredFromState: boolean): Promise<void> {
    await guestWrite(vm.name, 'vda', C, '4M', '1M'); // written by the guest before the backup
    const first = cliNodeDaemon(fault);
    await w.startSnapshot(vm.name, leaf);
    // A fault point that is never reached would leave the daemon running: bounded.
    const timer = setTimeout(() => first.kill('SIGTERM'), 90_000);
    const died = await first.finally(() => clearTimeout(timer));
    expect({ signal: died.signal, stderr: died.stderr }).toEqual({ signal: 'SIGKILL', stderr: '' });
    expect((await w.leaf(vm.name, leaf)).mode).toBe('snapshotting');
    cliNodeDaemon();
    const l = await w.waitForMode(vm.name, leaf, ['snapshotted'], 120_000);
    expect({ mode: l.mode, rv: l.returnValue }).toEqual({ mode: 'snapshotted', rv: ReturnCode.interruptedByRestart });
    await expectIntact(vm, [[A, '0'], [C, '4M']]);
    if (restoredFromState) expect(await virsh.domStateReason(vm.name)).toBe('running (restored)');
    await guestWrite(vm.name, 'vda', B, '2M', '1M'); // after the recovery
    await expectIntact(vm, [[A, '0'], [C, '4M'], [B, '2M']]);
    expect(await retainedFiles(vm.name)).toEqual([]);
    expect(await w.stepLeftovers()).toEqual([]);

    const done = await w.finishBackup(vm.name, next);
    expect({ mode: done.mode, rv: done.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    await expectIntact(vm, [[A, '0'], [C, '4M'], [B, '2M']]);
    expect(await retainedFiles(vm.name)).toEqual([]);
    expect(await w.stepLeftovers()).toEqual([]);
  }

  it('killed while libvirtd writes the state (virsh save still running): recovery waits for the save and restores the VM from it', async () => {
    // 640 MiB of random data in guest RAM: the save takes a second or more, so
    // the daemon dies while libvirt reports the job running (the fault point is
    // a look at the job that shows it active), and its successor usually starts
    // before the save has ended.
    const ram = path.join(w.root, 'ram.bin');
    const f = await open(ram, 'w');
    for (let i = 0; i < 640; i++) await f.write(randomBytes(1024 * 1024));
    await f.close();
    const vm = await w.addVm('savekill', { running: true, pattern: A, method: 'save', node: NODE2, memoryMiB: 768, ramLoader: ram });
    await killedSnapshotThenNextBackup(vm, '20261130T010000Z', '20261130T010100Z', 'snapshot:save-running', true);
  });

  it.each([
    ['snapshot:after-save', 'with the state file complete, the VM saved and its disks not yet swapped: recovery restores it from that file', 'savedkill', '20261130T011000Z', true],
    ['snapshot:after-move', 'with the disk image moved into retain and no overlay yet: recovery moves it back and restores the VM from the state file', 'movedkill', '20261130T011500Z', true],
    ['snapshot:before-restore', 'with the overlays in place and the VM not yet restored onto them: recovery moves the images back and restores the VM from the state file', 'overlaykill', '20261130T011700Z', true],
    ['before-report:snapshot', 'with the snapshot done (state in retain, guest on overlays) before its report: recovery pulls the overlays back', 'reportkill', '20261130T012000Z', false],
  ] as const)('killed at %s, %s', async (fault, _what, short, leaf, restoredFromState) => {
    const vm = await w.addVm(short, { running: true, pattern: A, method: 'save', node: NODE2 });
    await killedSnapshotThenNextBackup(vm, leaf, leaf.replace(/00Z$/, '30Z'), fault, restoredFromState);
  });
});

/**
 * slapd killed (SIGKILL) at the first progress report that `when` picks, of
 * a step `issue` starts; started again 2 s after `hostDone` says the step's
 * work on the host is over, so that its report has failed at least once.
 */
async function withSlapdKilledDuring(when: (p: StepProgress) => boolean, issue: () => Promise<unknown>, hostDone: () => Promise<boolean>): Promise<void> {
  let killed: Promise<void> | undefined;
  onProgress = (p) => {
    if (!when(p)) return;
    onProgress = undefined;
    killed = w.slapd.kill(); // SIGKILL sent before this returns: the step goes on without a directory
  };
  try {
    await issue();
    await w.waitFor(async () => killed !== undefined, 60_000);
    await killed;
    await w.waitFor(hostDone);
    await new Promise((r) => setTimeout(r, 2_000));
  } finally {
    onProgress = undefined;
    await w.slapd.start();
  }
}

describe('slapd killed in the middle of a live snapshot and started again a few seconds later', () => {
  it('the node reports the snapshot once the directory is back; the backup then finishes', async () => {
    const vm = await w.addVm('slapdgone', { running: true, pattern: A, method: 'live' });
    await guestWrite(vm.name, 'vda', C, '4M', '1M');
    const leaf = '20261130T020000Z';
    const layout = w.layoutOf(vm.name, leaf);
    const overlay = layout.retainPath(`${path.basename(vm.disks[0]!.path)}.overlay`);
    // Killed once the LDIF is exported (the step needs the directory before that), as libvirt takes the snapshot.
    await withSlapdKilledDuring((p) => p.vm === vm.name && p.step === 'snapshot' && p.message.startsWith('live snapshot:'), () => w.startSnapshot(vm.name, leaf), async () => {
      // The step's host part ends without the directory: guest on its overlay, memory in the backup.
      const live = parseDomainDisks(await virsh.dumpXml(vm.name))[0];
      const inBackup = await readdir(layout.backupDir).catch(() => [] as string[]);
      return live?.source === overlay && inBackup.includes(`${vm.name}.state.${leaf}`);
    });
    const l = await w.waitForMode(vm.name, leaf, ['snapshotted'], 120_000);
    expect({ mode: l.mode, rv: l.returnValue }).toEqual({ mode: 'snapshotted', rv: 0 });
    await guestWrite(vm.name, 'vda', B, '2M', '1M');
    const done = await w.finishBackup(vm.name, leaf);
    expect({ mode: done.mode, rv: done.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    await expectIntact(vm, [[A, '0'], [C, '4M'], [B, '2M']]);
    expect(await retainedFiles(vm.name)).toEqual([]);
    expect(await w.stepLeftovers()).toEqual([]);
  });
});

describe('slapd killed in the middle of retain and started again a few seconds later', () => {
  it('the complete backup is reported once the directory is back, not failed for its pruning', async () => {
    const vm = await w.addVm('slapdretain', { running: true, pattern: A, method: 'live' });
    await guestWrite(vm.name, 'vda', C, '4M', '1M');
    const older = '20261130T024000Z';
    await w.backupOk(vm.name, older); // something for pruning to look at (one iteration is kept)
    const leaf = '20261130T025000Z';
    const layout = w.layoutOf(vm.name, leaf);
    // Driven step by step as the control side does, so that only the node lives through the outage.
    const dn = await w.startSnapshot(vm.name, leaf);
    expect((await w.waitForMode(vm.name, leaf, ['snapshotted'])).returnValue).toBe(0);
    expect(await w.directory.casMode(dn, 'snapshotted', 'merge', { state: '0' })).toBe(true);
    expect((await w.waitForMode(vm.name, leaf, ['merged'])).returnValue).toBe(0);
    await withSlapdKilledDuring((p) => p.vm === vm.name && p.step === 'retain', () => w.directory.casMode(dn, 'merged', 'retain', { state: '0' }), async () =>
      // Retain ends on the host without the directory: manifest written, retain copy gone.
      (await exists(layout.manifestPath)) && !(await exists(layout.retainDir)));
    const retained = await w.waitForMode(vm.name, leaf, ['retained'], 120_000);
    expect({ mode: retained.mode, rv: retained.returnValue }).toEqual({ mode: 'retained', rv: 0 });
    const done = await w.finishBackup(vm.name, leaf);
    expect({ mode: done.mode, rv: done.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    // Pruning waited for a node that could ask the directory: the next retain prunes the older backup.
    expect((await readdir(path.dirname(layout.backupDir))).sort()).toEqual([older, leaf]);
    await expectIntact(vm, [[A, '0'], [C, '4M']]);
    expect(await retainedFiles(vm.name)).toEqual([]);
    expect(await w.stepLeftovers()).toEqual([]);
  });
});

describe('libvirtd restarted while the live merge\'s block commit runs', () => {
  it('the VM runs on; the merge ends the commit (pivot) and the backup finishes with the snapshot instant', async () => {
    // 2 MiB/s for the merge and 40 MiB written after the snapshot: the commit runs for
    // seconds (QEMU copies its first buffer, 16 MiB, before the limit applies).
    const vm = await w.addVm('virtdrestart', { running: true, pattern: A, method: 'live', backupAttributes: ['sstVirtualizationBandwidthMerge: 2'] });
    await guestWrite(vm.name, 'vda', C, '4M', '1M');
    const leaf = '20261130T030000Z';
    const dn = await w.startSnapshot(vm.name, leaf);
    expect((await w.waitForMode(vm.name, leaf, ['snapshotted'])).returnValue).toBe(0);
    await guestWrite(vm.name, 'vda', B, '8M', '40M');
    let restarted: Promise<void> | undefined;
    onProgress = (p) => {
      if (p.vm === vm.name && p.step === 'merge' && /commit of vda: [1-9]?0 %/.test(p.message)) {
        onProgress = undefined;
        restarted = restartLibvirtd();
      }
    };
    try {
      expect(await w.directory.casMode(dn, 'snapshotted', 'merge', { state: '0' })).toBe(true);
      await w.waitFor(async () => restarted !== undefined, 60_000);
      await restarted;
      const merged = await w.waitForMode(vm.name, leaf, ['merged'], 120_000);
      expect({ mode: merged.mode, rv: merged.returnValue }).toEqual({ mode: 'merged', rv: 0 });
    } finally {
      onProgress = undefined;
    }
    await expectIntact(vm, [[A, '0'], [C, '4M'], [B, '8M'], [B, '47M']]);
    const done = await w.finishBackup(vm.name, leaf);
    expect({ mode: done.mode, rv: done.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    // The backup holds the snapshot instant: what was written before it, none of what came after.
    const backupImage = w.layoutOf(vm.name, leaf).backupPath(path.basename(vm.disks[0]!.path));
    for (const [pattern, offset] of [[A, '0'], [C, '4M'], [0, '8M'], [0, '47M']] as const) expect({ offset, matches: await imageMatches(backupImage, pattern, offset, '1M') }).toEqual({ offset, matches: true });
    expect(await retainedFiles(vm.name)).toEqual([]);
    expect(await w.stepLeftovers()).toEqual([]);
  });
});

describe('the node daemon killed (SIGKILL) after a live merge could not keep a frozen image and committed its overlay', () => {
  it('recovery commits the other overlay without keeping it and fails the merge with the recorded 47 (not 0 for a backup without vda); nothing of the backup stays; the next backup finishes', async () => {
    const vm = await w.addVm('keepfail', { running: true, pattern: A, method: 'live', node: NODE2, targets: ['vda', 'vdb'] });
    // 48 MiB on vda; the backup filesystem has room for the memory state (32 MiB guest), not for vda's image too.
    await guestWrite(vm.name, 'vda', B, '1M', '48M');
    const leaf = '20261130T040000Z';
    const layout = w.layoutOf(vm.name, leaf);
    const backups = path.dirname(layout.backupDir);
    await mkdir(backups, { recursive: true });
    await run('mount', ['-t', 'tmpfs', '-o', 'size=40m', 'stoney-e2e-small', backups]);
    try {
      const first = cliNodeDaemon('merge:committed-unkept');
      const dn = await w.startSnapshot(vm.name, leaf);
      expect((await w.waitForMode(vm.name, leaf, ['snapshotted'], 120_000)).returnValue).toBe(0);
      expect(await readdir(layout.backupDir)).toEqual([`${vm.name}.state.${leaf}`]);
      await guestWrite(vm.name, 'vdb', C, '4M', '1M'); // after the snapshot: in the overlay
      expect(await w.directory.casMode(dn, 'snapshotted', 'merge', { state: '0' })).toBe(true);
      const timer = setTimeout(() => first.kill('SIGTERM'), 90_000);
      const died = await first.finally(() => clearTimeout(timer));
      expect({ signal: died.signal, stderr: died.stderr }).toEqual({ signal: 'SIGKILL', stderr: '' });
      expect((await w.leaf(vm.name, leaf)).mode).toBe('merging');
      // The run that died had recorded the failure, dropped what the backup had kept and folded vda back; vdb is still on its overlay.
      expect(await readdir(layout.retainDir)).toContain('keep-failed.json');
      expect(await exists(layout.backupDir)).toBe(false);
      expect(parseDomainDisks(await virsh.dumpXml(vm.name)).map((d) => path.dirname(d.source!) === layout.retainDir)).toEqual([false, true]);
      cliNodeDaemon();
      const merged = await w.waitForMode(vm.name, leaf, ['merged'], 120_000);
      expect({ mode: merged.mode, rv: merged.returnValue }).toEqual({ mode: 'merged', rv: ReturnCode.notEnoughDiskSpace });
      await expectIntact(vm, [[A, '0']]);
      expect(await guestReadMatches(vm.name, 'vda', B, '1M', '48M')).toBe(true);
      expect(await guestReadMatches(vm.name, 'vdb', C, '4M', '1M')).toBe(true);
      expect(await exists(layout.backupDir)).toBe(false);
      expect(await w.stepLeftovers()).toEqual([]);
    } finally {
      await run('umount', [backups]);
    }
    const done = await w.finishBackup(vm.name, '20261130T041000Z');
    expect({ mode: done.mode, rv: done.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    await expectIntact(vm, [[A, '0']]);
    expect(await guestReadMatches(vm.name, 'vda', B, '1M', '48M')).toBe(true);
    expect(await guestReadMatches(vm.name, 'vdb', C, '4M', '1M')).toBe(true);
    expect(await w.stepLeftovers()).toEqual([]);
  });
});

describe('the node daemon killed (SIGKILL) after the live merge of a VM its user had paused, before the report', () => {
  it('recovery finishes the merge and leaves the guest paused, never destroyed', async () => {
    const vm = await w.addVm('pausedmerge', { running: true, pattern: A, method: 'live', node: NODE2 });
    await guestWrite(vm.name, 'vda', C, '4M', '1M');
    const leaf = '20261130T042000Z';
    const first = cliNodeDaemon('before-report:merge');
    const dn = await w.startSnapshot(vm.name, leaf);
    expect((await w.waitForMode(vm.name, leaf, ['snapshotted'], 120_000)).returnValue).toBe(0);
    await guestWrite(vm.name, 'vda', B, '8M', '1M'); // after the snapshot: in the overlay
    await run('virsh', ['-c', w.libvirtUri, 'suspend', vm.name]);
    expect(await w.directory.casMode(dn, 'snapshotted', 'merge', { state: '0' })).toBe(true);
    const timer = setTimeout(() => first.kill('SIGTERM'), 90_000);
    const died = await first.finally(() => clearTimeout(timer));
    expect({ signal: died.signal, stderr: died.stderr }).toEqual({ signal: 'SIGKILL', stderr: '' });
    expect((await w.leaf(vm.name, leaf)).mode).toBe('merging');
    cliNodeDaemon();
    const merged = await w.waitForMode(vm.name, leaf, ['merged'], 120_000);
    expect({ mode: merged.mode, rv: merged.returnValue }).toEqual({ mode: 'merged', rv: 0 });
    expect(await virsh.domState(vm.name)).toBe('paused');
    await virsh.resume(vm.name);
    await expectIntact(vm, [[A, '0'], [C, '4M'], [B, '8M']]);
    const done = await w.finishBackup(vm.name, leaf);
    expect({ mode: done.mode, rv: done.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    expect(await w.stepLeftovers()).toEqual([]);
  });
});
