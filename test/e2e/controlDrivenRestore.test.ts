/**
 * Issue 9 item 1: a restore started by any directory client — the original
 * web UI writes `unretainSmallFiles` on a finished leaf and, once the user
 * confirmed, `unretainLargeFiles` itself — is driven to its end by the
 * control daemon (seed steps 09 and 12), with no `stoney-backup restore`
 * process. A CLI restore with a control daemon beside it finishes too
 * (whichever writes a step first wins). A failed restore waits at `restored`
 * for a human without blocking the VM's backups, and `restore --abort`
 * acknowledges it. Real slapd, node daemon, control daemon and libvirt/QEMU.
 */
import { describe, expect, it } from 'vitest';
import { execa } from 'execa';
import path from 'node:path';
import { rm } from 'node:fs/promises';
import { STORAGE_POOL, type World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { ldapModify } from '../helpers/slapd.js';
import { backingFileOf, guestReadMatches, guestWrite, virsh } from '../helpers/libvirt.js';
import { ControlDaemon, type ControlDaemonOptions } from '../../src/control/ControlDaemon.js';
import { ControlLease } from '../../src/control/ControlLease.js';
import { LdapLeaseStore } from '../../src/directory/LdapLeaseStore.js';
import { openLdapSession } from '../../src/directory/connect.js';
import { PollingChangeFeed } from '../../src/directory/PollingChangeFeed.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { runRestore } from '../../src/control/runRestore.js';

const A = 0xab;
const B = 0xcd;
const CLI = path.resolve('bin/stoney-backup.js');

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

/** What the original web UI sends: a plain modify of mode and state (no compare-and-swap). */
async function webUiWrites(leafDn: string, mode: string): Promise<void> {
  await ldapModify(w.slapd, `dn: ${leafDn}\nchangetype: modify\nreplace: sstProvisioningMode\nsstProvisioningMode: ${mode}\n-\nreplace: sstProvisioningState\nsstProvisioningState: 0\n`);
}

async function withControlDaemon<T>(work: () => Promise<T>, extra: Partial<ControlDaemonOptions> = {}): Promise<T> {
  const feed = new PollingChangeFeed(w.directory, {}, { intervalMs: 150, logger: w.logger });
  const control = new ControlDaemon({ directory: w.directory, feed, logger: w.logger.child({ role: 'control' }), policy: { ...defaultBatchPolicy, claimTimeoutMs: 60_000 }, zone: 'UTC', cronTick: false, sweepMs: 500, ...extra });
  await control.start();
  try {
    return await work();
  } finally {
    await control.stop();
  }
}

/** Files of the VM's retain directory (restores and backups put their work there). */
async function retainFiles(vm: string): Promise<string[]> {
  const dir = path.join(w.retainRoot, 'vm-persistent', STORAGE_POOL, vm);
  return (await execa('find', [dir, '-type', 'f'], { reject: false })).stdout.split('\n').filter(Boolean);
}

describe('a restore started by another directory client (the original web UI)', () => {
  it('is driven to finished by the control daemon: restore handed over after the large files, finished after restored', async () => {
    const tiny = await w.addVm('webui', { running: true, pattern: A });
    const leaf = '20261122T060000Z';
    const backedUp = await w.backupOk(tiny.name, leaf);
    await guestWrite(tiny.name, 'vda', B, '0', '1M');
    await withControlDaemon(async () => {
      await webUiWrites(backedUp.dn, 'unretainSmallFiles');
      const small = await w.waitForMode(tiny.name, leaf, ['unretainedSmallFiles'], 60_000);
      expect(small.returnValue).toBe(0);
      // The interaction phase is the user's: the daemon does not move on by itself.
      await new Promise((r) => setTimeout(r, 1500));
      expect((await w.leaf(tiny.name, leaf)).mode).toBe('unretainedSmallFiles');
      await webUiWrites(backedUp.dn, 'unretainLargeFiles');
      const done = await w.waitForMode(tiny.name, leaf, ['finished'], 120_000);
      expect({ mode: done.mode, rv: done.returnValue }).toEqual({ mode: 'finished', rv: 0 });
      // Step 12 writes the time of the end into sstProvisioningState.
      expect(done.state).toMatch(/^\d{8}T\d{6}Z$/);
    });
    expect(await virsh.domStateReason(tiny.name)).toBe('running (restored)');
    expect(await guestReadMatches(tiny.name, 'vda', A, '0', '1M')).toBe(true);
    await w.waitFor(async () => (await w.directory.getRestoreRequest(backedUp.dn)) === undefined);
    expect(await retainFiles(tiny.name)).toEqual([]);
  });

  it('a CLI restore beside a control daemon ends restored, whichever of the two writes the control steps', async () => {
    const tiny = await w.addVm('beside', { running: true, pattern: A });
    const leaf = '20261122T060100Z';
    const backedUp = await w.backupOk(tiny.name, leaf);
    await guestWrite(tiny.name, 'vda', B, '0', '1M');
    const r = await withControlDaemon(async () =>
      runRestore({ directory: w.directory, vm: (await w.directory.getVm(tiny.name))!, leaf: backedUp, policy: { ...defaultBatchPolicy, claimTimeoutMs: 60_000 }, logger: w.logger, pollMs: 100, decide: async () => ({ prefer: 'backup', overrides: {} }) }),
    );
    expect({ outcome: r.outcome, mode: r.leaf.mode, rv: r.leaf.returnValue }).toEqual({ outcome: 'restored', mode: 'finished', rv: 0 });
    expect(await guestReadMatches(tiny.name, 'vda', A, '0', '1M')).toBe(true);
  });

  it('a failed restore waits at restored for a human, the VM is still backed up, and restore --abort acknowledges it', async () => {
    const tiny = await w.addVm('failrst', { running: true, pattern: A });
    const leaf = '20261122T060200Z';
    const backedUp = await w.backupOk(tiny.name, leaf);
    await guestWrite(tiny.name, 'vda', B, '0', '1M');
    // Up to the large files without a control daemon, then the retained image disappears: the restore
    // step fails before it touches the live VM.
    await webUiWrites(backedUp.dn, 'unretainSmallFiles');
    await w.waitForMode(tiny.name, leaf, ['unretainedSmallFiles']);
    await webUiWrites(backedUp.dn, 'unretainLargeFiles');
    expect((await w.waitForMode(tiny.name, leaf, ['unretainedLargeFiles'])).returnValue).toBe(0);
    const image = path.basename(tiny.disks[0]!.path);
    const retained = (await retainFiles(tiny.name)).filter((f) => [image, `${image}.${leaf}`].includes(path.basename(f)));
    expect(retained).toHaveLength(1);
    await rm(retained[0]!);
    await withControlDaemon(async () => {
      const failed = await w.waitForMode(tiny.name, leaf, ['restored'], 60_000);
      expect(failed.returnValue).not.toBe(0);
      // Left for a human: several sweeps later it is still there.
      await new Promise((r) => setTimeout(r, 1500));
      expect((await w.leaf(tiny.name, leaf)).mode).toBe('restored');
      // The VM was not touched and its next backup is not held up by the failed restore.
      expect(await guestReadMatches(tiny.name, 'vda', B, '0', '1M')).toBe(true);
      await w.backupOk(tiny.name, '20261122T060300Z');
    });
    // `status` says what the leaf waits for and how to end it.
    const status = await execa('node', [CLI, 'status', '--json'], { env: { ...process.env, ...w.cliEnv() }, reject: false });
    const row = (JSON.parse(status.stdout) as { workflows: { vm: string; leaf: string; waitsFor: string }[] }).workflows.find((r) => r.vm === tiny.name && r.leaf === leaf);
    expect(row?.waitsFor).toMatch(new RegExp(`^the restore failed \\(\\d+\\): .*\`stoney-backup restore ${tiny.name} ${leaf} --abort\` acknowledges it$`));
    const ack = await execa('node', [CLI, 'restore', tiny.name, leaf, '--abort'], { env: { ...process.env, ...w.cliEnv() }, reject: false });
    expect({ exitCode: ack.exitCode, stderr: ack.stderr }).toMatchObject({ exitCode: 0 });
    expect(ack.stdout).toContain('finished');
    const after = await w.leaf(tiny.name, leaf);
    expect({ mode: after.mode, rv: after.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    // The node cleans up what the failed restore unretained.
    await w.waitFor(async () => (await w.directory.getRestoreRequest(backedUp.dn)) === undefined);
    expect(await retainFiles(tiny.name)).toEqual([]);
  });

  it('judges ages by the directory server clock: a host clock two hours ahead gives up nothing early', async () => {
    const tiny = await w.addVm('skew', { running: false, pattern: A });
    const leaf = '20261122T060400Z';
    const backedUp = await w.backupOk(tiny.name, leaf);
    await webUiWrites(backedUp.dn, 'unretainSmallFiles');
    await w.waitForMode(tiny.name, leaf, ['unretainedSmallFiles']);
    // The start-up measurement of a real control daemon: the lease look reads the server's time.
    const session = await openLdapSession({ url: w.slapd.url, bindDn: w.slapd.bindDn, passwordFile: w.slapd.passwordFile });
    const lease = new ControlLease(new LdapLeaseStore(session, w.slapd.baseDn), { durationMs: 15_000, renewMs: 3_000 }, w.logger);
    const term = (await lease.acquire(new AbortController().signal))!;
    await lease.release();
    await session.close();
    expect(Math.abs(term.serverOffsetMs!)).toBeLessThan(2_000); // slapd runs on this host
    const ahead = 2 * 3600_000;
    await withControlDaemon(async () => {
      // Four sweeps: an undecided restore is given up after one hour — by the server's clock, not yet.
      await new Promise((r) => setTimeout(r, 2_000));
      expect((await w.leaf(tiny.name, leaf)).mode).toBe('unretainedSmallFiles');
    }, { localNowMs: () => Date.now() + ahead, serverOffsetMs: term.serverOffsetMs! - ahead, policy: { ...defaultBatchPolicy, restoreDecisionTimeoutMs: 3600_000 } });
    // Without the measurement the same daemon gives it up at once (its host clock says two hours passed).
    await withControlDaemon(async () => {
      await w.waitForMode(tiny.name, leaf, ['finished'], 10_000);
    }, { localNowMs: () => Date.now() + ahead, policy: { ...defaultBatchPolicy, restoreDecisionTimeoutMs: 3600_000 } });
  });

  it('unblock drives on a backup its killed driver left at a control-side mode', async () => {
    const tiny = await w.addVm('unblk', { running: true, pattern: A });
    const cli = (args: string[]) => execa('node', [CLI, ...args], { env: { ...process.env, ...w.cliEnv() }, reject: false });
    // `backup` drives the control side; killed once the node works on the VM, it leaves the leaf behind.
    const child = execa('node', [CLI, 'backup', tiny.name], { env: { ...process.env, ...w.cliEnv() }, reject: false });
    await w.waitFor(async () => (await w.directory.listLeaves(tiny.name)).some((l) => ['snapshotting', 'snapshotted', 'merge', 'merging'].includes(l.mode)), 60_000);
    child.kill('SIGKILL');
    await child;
    const [leaf] = await w.directory.listLeaves(tiny.name);
    // Once the node finished what it had claimed, nothing moves the leaf any more.
    const stuck = await w.waitForMode(tiny.name, leaf!.leaf, ['snapshotted', 'merged', 'retained'], 60_000);
    await new Promise((r) => setTimeout(r, 1_000));
    expect((await w.leaf(tiny.name, leaf!.leaf)).mode).toBe(stuck.mode);
    const dry = await cli(['unblock', tiny.name, '--dry-run']);
    expect({ code: dry.exitCode, out: dry.stdout }).toEqual({ code: 0, out: `${tiny.name} ${leaf!.leaf} (${stuck.mode}): drive the backup on to its end — dry run` });
    const r = await cli(['unblock', tiny.name]);
    expect({ code: r.exitCode, out: r.stdout }).toEqual({ code: 0, out: `${tiny.name} ${leaf!.leaf} (${stuck.mode}): drive the backup on to its end — now finished` });
    expect((await w.leaf(tiny.name, leaf!.leaf)).returnValue).toBe(0);
    expect(await backingFileOf(tiny.disks[0]!.path)).toBeUndefined();
    const again = await cli(['unblock', tiny.name]);
    expect({ code: again.exitCode, out: again.stdout }).toEqual({ code: 0, out: `${tiny.name}: nothing holds its backups up` });
  });
});
