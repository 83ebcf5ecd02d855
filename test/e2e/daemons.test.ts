import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readdir, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { DateTime } from 'luxon';
import { execa } from 'execa';
import { World, vmDn, STORAGE_POOL } from '../helpers/world.js';
import { ldapAdd, ldapSearch } from '../helpers/slapd.js';
import { backingFileOf, guestReadMatches, imageMatches, virsh } from '../helpers/libvirt.js';
import { ControlDaemon } from '../../src/control/ControlDaemon.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { PollingChangeFeed } from '../../src/directory/PollingChangeFeed.js';
import { BackupLayout } from '../../src/domain/layout.js';
import { run } from '../../src/hypervisor/exec.js';
import { ldifText, vmEntryLines } from '../helpers/directoryEntries.js';

const A = 0xab;
const POOL = '0f83f084-8080-413e-b558-b678e504836e';
const NODE2 = 'node-02.example.com';
const CLI = path.resolve('bin/stoney-backup.js');

let w: World;
beforeAll(async () => {
  await stat('dist/src/cli/main.js').catch(() => {
    throw new Error('dist/ is missing: run `npm run build` (the test command does) before the e2e tests');
  });
  w = await World.start();
  await w.startNodeDaemon();
});
afterAll(async () => {
  await w?.cleanup();
});

async function startLeaf(vm: string, leaf: string, command = 'snapshot'): Promise<string> {
  expect(await w.directory.createLeaf(vm, leaf)).toBe(true);
  const dn = (await w.leaf(vm, leaf)).dn;
  expect(await w.directory.casMode(dn, 'initialize', 'initialized')).toBe(true);
  expect(await w.directory.casMode(dn, 'initialized', command, { state: '0' })).toBe(true);
  return dn;
}

describe('bad input: a clear code on the leaf, nothing touched, other VMs still served', () => {
  it('an unknown mode gets return value 51 and keeps its mode', async () => {
    const vm = (await w.addVm('unk', { running: true })).name;
    const leaf = '20261122T040000Z';
    expect(await w.directory.createLeaf(vm, leaf)).toBe(true);
    const dn = (await w.leaf(vm, leaf)).dn;
    expect(await w.directory.casMode(dn, 'initialize', 'frobnicate')).toBe(true);
    const end = Date.now() + 20_000;
    while ((await w.leaf(vm, leaf)).returnValue !== 51 && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
    expect((await w.leaf(vm, leaf)).mode).toBe('frobnicate');
    expect((await w.leaf(vm, leaf)).returnValue).toBe(51);
  });

  it('a VM libvirt does not know fails the snapshot with 23', async () => {
    const vm = (await w.addVm('ghost', { running: true, noDomain: true })).name;
    await startLeaf(vm, '20261122T040100Z');
    const l = await w.waitForMode(vm, '20261122T040100Z', ['snapshotted']);
    expect(l.returnValue).toBe(23);
  });

  it('a disk outside the image roots fails with 53 and the VM keeps its disk', async () => {
    const outside = path.join(w.root, 'elsewhere');
    const tiny = await w.addVm('outside', { running: true, imageDir: outside });
    await startLeaf(tiny.name, '20261122T040200Z');
    const l = await w.waitForMode(tiny.name, '20261122T040200Z', ['snapshotted']);
    expect(l.returnValue).toBe(53);
    expect(await virsh.domState(tiny.name)).toBe('running');
    expect(await backingFileOf(tiny.disks[0]!.path)).toBeUndefined();
    expect(await guestReadMatches(tiny.name, 'vda', A, '0', '1M')).toBe(true);
    expect(await readdir(w.retainRoot)).not.toContain('nothing'); // retain untouched for this VM:
    await expect(stat(path.join(w.retainRoot, 'vm-persistent', STORAGE_POOL, tiny.name))).rejects.toThrow(/ENOENT/);
  });

  it('a backup directory URL that is not file:// fails with 35', async () => {
    const tiny = await w.addVm('http', { running: true, backupAttributes: ['sstBackupRootDirectory: http://backup.example.com/x'] });
    await startLeaf(tiny.name, '20261122T040300Z');
    const l = await w.waitForMode(tiny.name, '20261122T040300Z', ['snapshotted']);
    expect(l.returnValue).toBe(35);
    expect(await backingFileOf(tiny.disks[0]!.path)).toBeUndefined();
  });

  it('a VM name that is not a safe path component gets 52 and reaches no command', async () => {
    const bad = `${w.prefix}..evil`;
    await ldapAdd(w.slapd, `${ldifText(vmEntryLines(vmDn(bad), { name: bad, node: w.nodeName, pool: POOL }))}
dn: ou=backup,${vmDn(bad)}
objectClass: top
objectClass: organizationalUnit
ou: backup

dn: ou=20261122T040400Z,ou=backup,${vmDn(bad)}
objectClass: top
objectClass: organizationalUnit
objectClass: sstProvisioning
ou: 20261122T040400Z
sstProvisioningMode: snapshot
sstProvisioningState: 0
sstProvisioningExecutionDate: 0
`);
    const end = Date.now() + 20_000;
    let out = '';
    while (Date.now() < end) {
      out = await ldapSearch(w.slapd, `ou=20261122T040400Z,ou=backup,${vmDn(bad)}`, '(objectClass=*)', ['sstProvisioningMode', 'sstProvisioningReturnValue'], 'base');
      if (/sstProvisioningReturnValue: 52/.test(out)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(out).toMatch(/sstProvisioningReturnValue: 52/);
    expect(out).toMatch(/sstProvisioningMode: snapshot/);
  });

  it('after all that, the daemon still backs up a good VM', async () => {
    const tiny = await w.addVm('good', { running: true });
    await startLeaf(tiny.name, '20261122T040500Z');
    const l = await w.waitForMode(tiny.name, '20261122T040500Z', ['snapshotted']);
    expect(l.returnValue).toBe(0);
    // Finish it (merge) so the VM does not stay on an overlay.
    expect(await w.directory.casMode(l.dn, 'snapshotted', 'merge', { state: '0' })).toBe(true);
    expect((await w.waitForMode(tiny.name, '20261122T040500Z', ['merged'])).returnValue).toBe(0);
    expect(await backingFileOf(tiny.disks[0]!.path)).toBeUndefined();
  });
});

describe('a node daemon restarted in the middle of a snapshot', () => {
  async function crashedSnapshot(short: string, leaf: string, restored: boolean) {
    const tiny = await w.addVm(short, { running: true, node: NODE2 });
    const vm = tiny.name;
    const layout = new BackupLayout({ rootDirectory: w.backupRoot, retainDirectory: w.retainRoot, vmType: 'vm-persistent', pool: STORAGE_POOL, vm, leaf });
    const dn = await startLeaf(vm, leaf);
    expect(await w.directory.casMode(dn, 'snapshot', 'snapshotting')).toBe(true);
    // What a daemon had done when it died: save, move the disk, create the overlay (and maybe restore).
    await mkdir(layout.retainDir, { recursive: true });
    const state = layout.retainPath(`${vm}.state`);
    await virsh.save(vm, state);
    const img = tiny.disks[0]!.path;
    const retained = layout.retainPath(path.basename(img));
    await rename(img, retained);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', retained, img]);
    if (restored) {
      const xml = path.join(w.root, `${vm}.xml`);
      const { stripBackingStores } = await import('../../src/hypervisor/domainXml.js');
      await writeFile(xml, stripBackingStores(await virsh.saveImageXml(state)));
      await virsh.restore(state, xml);
    }
    return { vm, img, layout };
  }

  it('brings the VM back on its own image and fails the step with 50', async () => {
    const saved = await crashedSnapshot('crashsaved', '20261122T041000Z', false);
    const restored = await crashedSnapshot('crashrestored', '20261122T041000Z', true);
    expect(await virsh.domState(saved.vm)).toBe('shut off');
    const daemon = await w.startNodeDaemon(NODE2); // recovery runs at start
    for (const c of [saved, restored]) {
      const l = await w.leaf(c.vm, '20261122T041000Z');
      expect({ vm: c.vm, mode: l.mode, rv: l.returnValue }).toEqual({ vm: c.vm, mode: 'snapshotted', rv: 50 });
      expect(await virsh.domState(c.vm)).toBe('running');
      expect(await backingFileOf(c.img)).toBeUndefined();
      expect(await guestReadMatches(c.vm, 'vda', A, '0', '1M')).toBe(true);
      await expect(stat(c.layout.retainDir)).rejects.toThrow(/ENOENT/);
    }
    await daemon.stop();
  });
});

describe('control daemon', () => {
  it('plans leaves from the cron fields in local time (UTC names across DST), skips excluded VMs, and drives them to finished', async () => {
    const keepBoth = ['sstBackupNumberOfIterations: 2'];
    const a = (await w.addVm('cronA', { running: true, cron: '0 3 * * *', backupAttributes: keepBoth })).name;
    const b = (await w.addVm('cronB', { running: false, cron: '0 3 * * *', backupAttributes: keepBoth })).name;
    const ex = (await w.addVm('cronEx', { running: true, cron: '0 3 * * *' })).name;
    const broken = (await w.addVm('cronBad', { running: true, cron: '0 25 * * *' })).name;
    await w.directory.setExcluded(ex, true);
    // Only these VMs' own schedules count here: the World switched the inherited global one off.
    const feed = new PollingChangeFeed(w.directory, {}, { intervalMs: 150, logger: w.logger });
    const control = new ControlDaemon({ directory: w.directory, feed, logger: w.logger, policy: { ...defaultBatchPolicy, claimTimeoutMs: 60_000 }, zone: 'Europe/Zurich', cronTick: false, sweepMs: 500 });
    await control.start();
    try {
      // Winter: 03:00 Zurich = 02:00Z; summer: 03:00 Zurich = 01:00Z.
      const winter = await control.scheduleDue(DateTime.fromISO('2026-12-01T01:59:00Z'), DateTime.fromISO('2026-12-01T02:00:00Z'));
      expect(winter.sort()).toEqual([`${a}/20261201T020000Z`, `${b}/20261201T020000Z`].sort());
      const summer = await control.scheduleDue(DateTime.fromISO('2026-07-01T00:59:00Z'), DateTime.fromISO('2026-07-01T01:00:00Z'));
      expect(summer.sort()).toEqual([`${a}/20260701T010000Z`, `${b}/20260701T010000Z`].sort());
      expect(await w.directory.listLeaves(ex)).toEqual([]);
      expect(await w.directory.listLeaves(broken)).toEqual([]);
      for (const vm of [a, b]) {
        for (const leaf of ['20261201T020000Z', '20260701T010000Z']) {
          const l = await w.waitForMode(vm, leaf, ['finished'], 120_000);
          expect({ vm, leaf, rv: l.returnValue }).toEqual({ vm, leaf, rv: 0 });
        }
      }
      expect(await virsh.domState(a)).toBe('running');
      expect(await virsh.domState(b)).toBe('shut off');
    } finally {
      await control.stop();
    }
  });

  it('fails a command no node claims within the claim timeout with 49', async () => {
    const vm = (await w.addVm('orphan', { running: true, node: 'node-99.example.com' })).name;
    const feed = new PollingChangeFeed(w.directory, {}, { intervalMs: 150, logger: w.logger });
    const control = new ControlDaemon({ directory: w.directory, feed, logger: w.logger, policy: { ...defaultBatchPolicy, claimTimeoutMs: 1_000 }, cronTick: false, sweepMs: 300 });
    await startLeaf(vm, '20261122T042000Z');
    await control.start();
    try {
      const l = await w.waitForMode(vm, '20261122T042000Z', ['snapshotted'], 30_000);
      expect(l.returnValue).toBe(49);
    } finally {
      await control.stop();
    }
  });
});

describe('kvmbackup (the CLI, as cron runs it)', () => {
  const env = () => ({
    STONEY_LDAP_URL: w.slapd.url,
    STONEY_LDAP_BIND_DN: w.slapd.bindDn,
    STONEY_LDAP_PASSWORD_FILE: w.slapd.passwordFile,
    STONEY_LDAP_BASE_DN: w.slapd.baseDn,
    STONEY_NODE_NAME: 'node-03.example.com',
    STONEY_LIBVIRT_URI: w.libvirtUri,
    STONEY_IMAGE_ROOTS: w.imageRoot,
    STONEY_ALLOWED_ROOTS: `${w.backupRoot}:${w.retainRoot}`,
    STONEY_RUN_DIR: w.runDir,
  });
  let vms: string[] = [];

  beforeAll(async () => {
    vms = [
      (await w.addVm('kb1', { running: true, node: 'node-03.example.com' })).name,
      (await w.addVm('kb2', { running: false, node: 'node-03.example.com' })).name,
      (await w.addVm('kbex', { running: true, node: 'node-03.example.com' })).name,
    ];
    await w.directory.setExcluded(vms[2]!, true);
  });

  async function worldSnapshot(): Promise<string> {
    const ldap = await ldapSearch(w.slapd, w.slapd.baseDn, '(objectClass=*)', ['*', '+']);
    const files = (await execa('find', [w.root, '-printf', '%p %s %T@ %m\n'])).stdout.split('\n').sort().join('\n');
    const states = await Promise.all(vms.map((v) => virsh.domState(v)));
    return `${ldap}\n${files}\n${states.join(',')}`;
  }

  it('--dry-run prints the plan and changes nothing, on disk or in the directory', async () => {
    const before = await worldSnapshot();
    const r = await execa('node', [CLI, 'kvmbackup', '--dry-run'], { env: env(), reject: false });
    expect({ code: r.exitCode, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(r.stdout).toContain(`back up  ${vms[0]}`);
    expect(r.stdout).toContain(`back up  ${vms[1]}`);
    expect(r.stdout).toContain(`skip     ${vms[2]}: excluded from backups`);
    expect(await worldSnapshot()).toBe(before);
    const j = await execa('node', [CLI, 'kvmbackup', '--dry-run', '--json', '--exclude', vms[1]!], { env: env(), reject: false });
    const plan = JSON.parse(j.stdout) as { plan: { vm: string; backup: boolean; reason: string }[] };
    expect(plan.plan.map((p) => [p.vm, p.backup])).toEqual([[vms[0], true], [vms[1], false], [vms[2], false]]);
  });

  it('backs up the node\'s VMs, skips the excluded one, and exits 0', async () => {
    const r = await execa('node', [CLI, 'kvmbackup'], { env: env(), reject: false });
    expect({ code: r.exitCode, out: r.stdout }).toMatchObject({ code: 0 });
    expect(r.stderr).toContain(`skipping ${vms[2]}: excluded`);
    // A long copy's progress shows its throughput: the live merge of the running VM keeps its disk image in the backup.
    expect(r.stderr).toMatch(new RegExp(`^${vms[0]} +\\S+  merge: keeping ${vms[0]}-vda\\.qcow2 100% \\d+(\\.\\d+)? [kMG]B/s$`, 'm'));
    for (const vm of vms.slice(0, 2)) {
      const leaves = await w.directory.listLeaves(vm);
      expect(leaves.map((l) => [l.mode, l.returnValue])).toEqual([['finished', 0]]);
      expect(r.stdout).toContain(`${vm}: backed up`);
    }
    expect(await w.directory.listLeaves(vms[2]!)).toEqual([]);
    const list = await execa('node', [CLI, 'list', vms[0]!, '--json'], { env: env(), reject: false });
    const rows = (JSON.parse(list.stdout) as { backups: { restorable: boolean; sizeBytes: number }[] }).backups;
    expect(rows).toHaveLength(1);
    expect(rows[0]!.restorable).toBe(true);
    expect(rows[0]!.sizeBytes).toBeGreaterThan(0);
    // The running VM still sees its data (read through QEMU: the image file itself is in use).
    expect(await guestReadMatches(vms[0]!, 'vda', A, '0', '1M')).toBe(true);
    expect(await imageMatches(path.join(w.imageDir, `${vms[1]}-vda.qcow2`), A, '0', '1M')).toBe(true);
  });

  it('a run killed between two steps leaves its backup at a control-side mode; the next run drives it to its end first', async () => {
    const killed = await execa('node', [CLI, 'kvmbackup', '--include', vms[0]!], { env: { ...env(), STONEY_TEST_FAULT: 'after-report:snapshot' }, reject: false });
    expect(killed.signal).toBe('SIGKILL');
    const [left] = (await w.directory.listLeaves(vms[0]!)).filter((l) => l.mode !== 'finished');
    expect({ mode: left?.mode, rv: left?.returnValue }).toEqual({ mode: 'snapshotted', rv: 0 });
    // Nothing else drives it: without the resume every later run skipped the VM for good. It counts as
    // left behind once unchanged for the claim timeout (1 s here; modifyTimestamp has whole seconds).
    await new Promise((r) => setTimeout(r, 2_100));
    const r = await execa('node', [CLI, 'kvmbackup', '--include', vms[0]!], { env: { ...env(), STONEY_CLAIM_TIMEOUT_S: '1' }, reject: false });
    expect({ code: r.exitCode, out: r.stdout }).toMatchObject({ code: 0 });
    expect(r.stderr).toContain(`resuming the interrupted backup ${left!.leaf} of ${vms[0]} (${vms[0]}: snapshotted)`);
    expect(r.stderr).toContain(`resumed ${vms[0]} ${left!.leaf}: finished`);
    const resumed = await w.leaf(vms[0]!, left!.leaf).catch(() => undefined);
    // Finished (it may since have been rotated away by tonight's backup: one iteration is kept).
    if (resumed) expect({ mode: resumed.mode, rv: resumed.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    expect((await w.directory.listLeaves(vms[0]!)).every((l) => l.mode === 'finished' && l.returnValue === 0)).toBe(true);
    expect(r.stdout).toContain(`${vms[0]}: backed up`);
    expect(await backingFileOf(path.join(w.imageDir, `${vms[0]}-vda.qcow2`))).toBeUndefined();
  });

  it('exits 6 when it skipped a VM whose last backup failed (cron notices), still backing up the others; --force exits 0', async () => {
    const failed = '20261101T000000Z';
    await ldapAdd(w.slapd, `dn: ou=${failed},ou=backup,${vmDn(vms[1]!)}
objectClass: top
objectClass: organizationalUnit
objectClass: sstProvisioning
ou: ${failed}
sstProvisioningMode: snapshotted
sstProvisioningState: 20261101T000100Z
sstProvisioningExecutionDate: 0
sstProvisioningReturnValue: 5
`);
    // Only the failed leaf is the newest of vms[1] if its finished backup from above is older: drop that one.
    for (const l of await w.directory.listLeaves(vms[1]!)) if (l.leaf !== failed) await w.directory.deleteLeaf(l.dn);
    const before0 = new Set((await w.directory.listLeaves(vms[0]!)).map((l) => l.leaf));
    const r = await execa('node', [CLI, 'kvmbackup'], { env: env(), reject: false });
    expect(r.exitCode).toBe(6);
    expect(r.stderr).toContain(`skipping ${vms[1]}: last backup ${failed} did not finish`);
    expect(r.stdout).toContain(`${vms[0]}: backed up`);
    // vms[0] got tonight's backup (older ones may be rotated away by its iteration count).
    const fresh = (await w.directory.listLeaves(vms[0]!)).filter((l) => !before0.has(l.leaf));
    expect(fresh.map((l) => [l.mode, l.returnValue])).toEqual([['finished', 0]]);
    expect((await w.directory.listLeaves(vms[1]!)).map((l) => [l.leaf, l.mode, l.returnValue])).toEqual([[failed, 'snapshotted', 5]]);
    const forced = await execa('node', [CLI, 'kvmbackup', '--force', '--include', vms[1]!], { env: env(), reject: false });
    expect({ code: forced.exitCode, stderr: forced.stderr }).toMatchObject({ code: 0 });
    expect((await w.directory.listLeaves(vms[1]!)).map((l) => [l.mode, l.returnValue])).toEqual([['finished', 0]]);
  });
});
