/**
 * Issue 9 item 7 (d) and the restore part of its crash matrix: a restore
 * killed (SIGKILL, as a power loss of the process) at each point of its live
 * part, then the node daemon started again (its recovery runs first).
 * Before the decided VM is defined, recovery rolls the restore back: previous
 * images in place, the live definition defined again and the VM resumed from
 * the state the restore saved it in — nothing the guest wrote is lost; the
 * leaf waits at restored (50) for a human, and `restore --abort`
 * acknowledges it. After the define, recovery completes it: the VM runs with
 * the backup's data, the directory holds the decided subtree, the leaf is
 * restored (0). A restore as a new VM never touches the original either way.
 * A kill during the large files' copy touches nothing live: the leaf ends at
 * unretainedLargeFiles (50), and the restore can be given up and run again.
 * Real slapd, libvirt/QEMU and the real CLI (`restore --local`, which runs
 * the node's steps in its own process) in a child process.
 */
import { describe, expect, it } from 'vitest';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { STORAGE_POOL, vmDn, type World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { ldapModify, ldapSearch } from '../helpers/slapd.js';
import { backingFileOf, guestReadMatches, guestWrite, restartLibvirtd, virsh, type TinyVm } from '../helpers/libvirt.js';
import { parseDomainDisks } from '../../src/hypervisor/domainXml.js';

const A = 0xab;
const B = 0xcd;
const C = 0x5a;
const CLI = path.resolve('bin/stoney-backup.js');
/** The VM's memory in the directory after the backup: a restore taking the backup's values puts back 32 MiB. */
const LIVE_MEMORY = String(64 * 1024 * 1024);
const BACKUP_MEMORY = String(32 * 1024 * 1024);

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

const env = (extra: Record<string, string> = {}) => ({ ...process.env, ...w.cliEnv(), STONEY_NODE_NAME: w.nodeName, STONEY_RUN_DIR: w.runDir, ...extra });
const exists = (f: string) => stat(f).then(() => true, () => false);

/** Every file below the VM's retain directory (none once a restore ended or was given up). */
async function retainedFiles(vm: string): Promise<string> {
  return (await execa('find', [path.join(w.retainRoot, 'vm-persistent', STORAGE_POOL, vm), '-type', 'f'], { reject: false })).stdout;
}

const memoryInDirectory = async (vm: string) => /sstMemory: (\d+)/.exec(await ldapSearch(w.slapd, vmDn(vm), '(objectClass=*)', ['sstMemory'], 'base'))?.[1];

/**
 * A running VM with two disks, backed up with A, then B written by its guest
 * and its memory changed in the directory; `restore --local` (as `asNew` if
 * given) killed at `fault`, `beforeRestart` run, then the node daemon started again.
 */
async function killedRestore(short: string, leaf: string, fault: string, asNew?: string, beforeRestart?: (vm: TinyVm) => Promise<void>): Promise<TinyVm> {
  const tiny = await w.addVm(short, { targets: ['vda', 'vdb'], running: true, pattern: A });
  await w.backupOk(tiny.name, leaf);
  for (const t of ['vda', 'vdb']) await guestWrite(tiny.name, t, B, '0', '1M');
  await ldapModify(w.slapd, `dn: ${vmDn(tiny.name)}\nchangetype: modify\nreplace: sstMemory\nsstMemory: ${LIVE_MEMORY}\n`);
  if (asNew) w.track(asNew);
  await w.stopNodeDaemons();
  try {
    const r = await execa('node', [CLI, 'restore', tiny.name, leaf, '--yes', '--local', ...(asNew ? ['--as', asNew] : [])], { env: env({ STONEY_TEST_FAULT: fault }), reject: false });
    expect({ signal: r.signal, stderr: r.stderr.split('\n').filter((l) => /error|fatal/i.test(l)) }).toEqual({ signal: 'SIGKILL', stderr: [] });
    await beforeRestart?.(tiny);
  } finally {
    await w.startNodeDaemon();
  }
  return tiny;
}

/** `vm` runs (as `reason` says) with `pattern` on every disk, on flat images. */
async function expectRunsWith(vm: string, reason: RegExp, pattern: number): Promise<void> {
  expect(await virsh.domStateReason(vm)).toMatch(reason);
  expect(await virsh.isPersistent(vm)).toBe(true);
  const disks = parseDomainDisks(await virsh.dumpXml(vm));
  expect(disks.map((d) => d.target)).toEqual(['vda', 'vdb']);
  for (const d of disks) {
    expect({ disk: d.target, matches: await guestReadMatches(vm, d.target, pattern, '0', '1M') }).toEqual({ disk: d.target, matches: true });
    expect(d.backingChain).toEqual([]);
    expect(await backingFileOf(d.source!)).toBeUndefined();
  }
}

/** A completed restore's work directory (decided files, the live VM's definition, state and images set aside) is gone, and nothing else is left. */
async function expectNothingLeft(vm: string, leaf: string): Promise<void> {
  expect(await exists(w.layoutOf(vm, leaf).retainDir)).toBe(false);
  expect(await retainedFiles(vm)).toBe('');
  expect(await w.stepLeftovers()).toEqual([]);
}

/** Acknowledge a rolled-back restore; the leaf is finished again and the restore's files go. */
async function acknowledge(vm: string, leaf: string): Promise<void> {
  const ack = await execa('node', [CLI, 'restore', vm, leaf, '--abort'], { env: env(), reject: false });
  expect({ code: ack.exitCode, err: ack.stderr }).toMatchObject({ code: 0 });
  expect((await w.leaf(vm, leaf)).mode).toBe('finished');
  await w.waitFor(async () => (await retainedFiles(vm)) === '');
}

describe('a restore killed before the decided VM is defined: rolled back', () => {
  for (const [fault, short, leaf] of [
    ['restore:after-undefine', 'rkundef', '20261122T080000Z'],
    ['restore:after-move', 'rkmove', '20261122T080100Z'],
  ] as const) {
    it(`killed at ${fault}: the node's recovery rolls it back; the VM runs on with everything it had written`, async () => {
      const tiny = await killedRestore(short, leaf, fault);
      const after = await w.waitForMode(tiny.name, leaf, ['restored'], 120_000);
      expect(after.returnValue).toBe(50);
      await expectRunsWith(tiny.name, /^running \(restored\)$/, B);
      expect(await memoryInDirectory(tiny.name)).toBe(LIVE_MEMORY);
      await acknowledge(tiny.name, leaf);
      expect(await w.stepLeftovers()).toEqual([]);
    });
  }
});

describe('a restore killed after the decided VM is defined: completed by recovery', () => {
  for (const [fault, short, leaf, reason] of [
    // Defined, not started: recovery restores it from the backup's state with the decided XML.
    ['restore:after-define', 'rkdef', '20261122T080200Z', /^running \(restored\)$/],
    // Killed while libvirt restores the state (the dead process's virsh restore goes on): recovery waits or takes it as started.
    ['restore:restoring-state', 'rkrest', '20261122T080250Z', /^running \(restored\)$/],
    // Running on the backup's state, the directory not yet written: recovery leaves the VM and writes it.
    ['restore:after-start', 'rkstart', '20261122T080300Z', /^running \(restored\)$/],
  ] as const) {
    it(`killed at ${fault}: the VM runs with the backup's data, the directory holds the decided subtree, the leaf is restored (0)`, async () => {
      const tiny = await killedRestore(short, leaf, fault);
      const after = await w.waitForMode(tiny.name, leaf, ['restored'], 120_000);
      expect(after.returnValue).toBe(0);
      await expectRunsWith(tiny.name, reason, A);
      expect(await memoryInDirectory(tiny.name)).toBe(BACKUP_MEMORY);
      await expectNothingLeft(tiny.name, leaf);
    });
  }
});

describe('a restore killed after its VM ran, which then went off without libvirt knowing why (as after a host reboot)', () => {
  it('is completed with a cold boot (0): the backup\'s memory is never put back on disks the restored guest has written', async () => {
    const leaf = '20261122T080800Z';
    const tiny = await killedRestore('rkran', leaf, 'restore:after-start', undefined, async (vm) => {
      // The restored guest writes C; then its QEMU goes away and libvirtd restarts, forgetting why it is off.
      await guestWrite(vm.name, 'vdb', C, '2M', '1M');
      await execa('virsh', ['-c', w.libvirtUri, 'destroy', vm.name]);
      await restartLibvirtd();
      expect(await virsh.domStateReason(vm.name)).toBe('shut off (unknown)');
    });
    const after = await w.waitForMode(tiny.name, leaf, ['restored'], 120_000);
    expect({ rv: after.returnValue, mode: after.mode }).toEqual({ rv: 0, mode: 'restored' });
    // Booted, not resumed from the backup's memory; what the restored guest wrote is kept.
    expect(await virsh.domStateReason(tiny.name)).toBe('running (booted)');
    expect(await guestReadMatches(tiny.name, 'vdb', C, '2M', '1M')).toBe(true);
    for (const t of ['vda', 'vdb']) expect(await guestReadMatches(tiny.name, t, A, '0', '1M')).toBe(true);
    expect(await memoryInDirectory(tiny.name)).toBe(BACKUP_MEMORY);
    await expectNothingLeft(tiny.name, leaf);
  });
});

describe('a restore killed after the define whose decided VM cannot be started', () => {
  it('is rolled back by recovery (50): the decided domain is off, so the previous VM comes back with everything it had written', async () => {
    const leaf = '20261122T080700Z';
    const tiny = await killedRestore('rkbad', leaf, 'restore:after-define', undefined, async (vm) => {
      // Real faults, no fake: the backup's state file cut short (its restore fails, so the VM is booted)
      // and the defined decided domain given a NIC on a bridge that does not exist (so its boot fails).
      const layout = w.layoutOf(vm.name, leaf);
      await execa('truncate', ['-s', '65536', layout.retainPath(`${layout.stateFileName}.${leaf}`)]);
      await execa('virsh', ['-c', w.libvirtUri, 'attach-interface', vm.name, 'bridge', 'stoneynobr0', '--config']);
    });
    const after = await w.waitForMode(tiny.name, leaf, ['restored'], 120_000);
    expect({ rv: after.returnValue, mode: after.mode }).toEqual({ rv: 50, mode: 'restored' });
    await expectRunsWith(tiny.name, /^running \(restored\)$/, B);
    expect(await virsh.dumpXml(tiny.name, { inactive: true })).not.toContain('stoneynobr0');
    expect(await memoryInDirectory(tiny.name)).toBe(LIVE_MEMORY);
    await acknowledge(tiny.name, leaf);
    expect(await w.stepLeftovers()).toEqual([]);
  });
});

describe('a restore as a new VM killed in the middle: the original is never touched', () => {
  it('killed after moving the copy\'s first image: rolled back (50), nothing of the copy is left', async () => {
    const leaf = '20261122T080400Z';
    const copy = w.name('rkascopy1');
    const tiny = await killedRestore('rkas1', leaf, 'restore:after-move', copy);
    const after = await w.waitForMode(tiny.name, leaf, ['restored'], 120_000);
    expect({ rv: after.returnValue, mode: after.mode }).toEqual({ rv: 50, mode: 'restored' });
    expect(await virsh.domainExists(copy)).toBe(false);
    for (const d of tiny.disks) expect(await exists(path.join(path.dirname(d.path), `${copy}-${path.basename(d.path)}`))).toBe(false);
    await expectRunsWith(tiny.name, /^running \((booted|unpaused)\)$/, B);
    expect(await memoryInDirectory(tiny.name)).toBe(LIVE_MEMORY);
    expect(await w.directory.getVm(copy)).toBeUndefined();
    await acknowledge(tiny.name, leaf);
    expect(await w.stepLeftovers()).toEqual([]);
  });

  it('killed after the copy\'s define: completed (0), the copy runs with the backup\'s data beside the untouched original', async () => {
    const leaf = '20261122T080500Z';
    const copy = w.name('rkascopy2');
    const tiny = await killedRestore('rkas2', leaf, 'restore:after-define', copy);
    const after = await w.waitForMode(tiny.name, leaf, ['restored'], 120_000);
    expect({ rv: after.returnValue, mode: after.mode }).toEqual({ rv: 0, mode: 'restored' });
    // Booted, as restoreStep boots a copy: libvirt refuses the state file under the copy's new UUID.
    await expectRunsWith(copy, /^running \(booted\)$/, A);
    for (const d of parseDomainDisks(await virsh.dumpXml(copy))) expect(path.basename(d.source!)).toMatch(new RegExp(`^${copy}-`));
    await expectRunsWith(tiny.name, /^running \((booted|unpaused)\)$/, B);
    expect(await memoryInDirectory(tiny.name)).toBe(LIVE_MEMORY);
    expect(await memoryInDirectory(copy)).toBe(BACKUP_MEMORY);
    await expectNothingLeft(tiny.name, leaf);
  });
});

describe('the node killed during the large files\' copy (unretainLargeFiles)', () => {
  it('ends at unretainedLargeFiles (50) with the VM untouched; given up, the same restore runs again to the end', async () => {
    const leaf = '20261122T080600Z';
    const tiny = await killedRestore('rkcopy', leaf, 'unretainLargeFiles:copying');
    const work = w.layoutOf(tiny.name, leaf).retainDir;
    const after = await w.waitForMode(tiny.name, leaf, ['unretainedLargeFiles'], 120_000);
    expect({ rv: after.returnValue, mode: after.mode }).toEqual({ rv: 50, mode: 'unretainedLargeFiles' });
    // Killed inside a copy: its partial file is still there (the copy never finished).
    expect((await retainedFiles(tiny.name)).split('\n').filter((f) => f.startsWith(work) && f.endsWith('.partial'))).toHaveLength(1);
    // Never stopped or restored since the backup (which paused and resumed it).
    await expectRunsWith(tiny.name, /^running \((booted|unpaused)\)$/, B);
    expect(await memoryInDirectory(tiny.name)).toBe(LIVE_MEMORY);
    // Given up (the protocol's abort of a failed copy); the node removes what was unretained, the partial copy too.
    await acknowledge(tiny.name, leaf);
    await w.waitFor(async () => (await w.directory.getRestoreRequest(after.dn)) === undefined);
    expect(await w.stepLeftovers()).toEqual([]);

    const again = await execa('node', [CLI, 'restore', tiny.name, leaf, '--yes'], { env: env(), reject: false });
    expect({ code: again.exitCode, err: again.stderr.split('\n').filter((l) => /error|fatal/i.test(l)) }).toEqual({ code: 0, err: [] });
    expect((await w.leaf(tiny.name, leaf)).mode).toBe('finished');
    await expectRunsWith(tiny.name, /^running \(restored\)$/, A);
    expect(await memoryInDirectory(tiny.name)).toBe(BACKUP_MEMORY);
    await w.waitFor(async () => (await retainedFiles(tiny.name)) === '');
    expect(await w.stepLeftovers()).toEqual([]);
  });
});
