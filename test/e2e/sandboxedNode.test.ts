import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFile, mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { ResultPromise } from 'execa';
import { World } from '../helpers/world.js';
import { guestReadMatches, guestWrite, virsh } from '../helpers/libvirt.js';
import { runRestore } from '../../src/control/runRestore.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { run } from '../../src/hypervisor/exec.js';
import { serviceDirectives } from '../helpers/systemdUnit.js';
import { capMask, spawnSandboxed, statusMask } from '../helpers/sandbox.js';

/**
 * The node daemon does a backup and a restore of running VMs inside the
 * confinement of deploy/stoney-backup-node.service, rebuilt without systemd
 * (test/helpers/sandbox.ts): every mount read-only but the world's roots
 * (ReadWritePaths=, pointed at the world instead of /var/…), an empty /tmp
 * (PrivateTmp=: the restore XML goes there and the virsh client must still
 * read it), empty homes, the unit's capability bounding set, no_new_privs.
 */
const CLI = path.resolve('bin/stoney-backup.js');
const NODE_UNIT = path.resolve('deploy/stoney-backup-node.service');
const A = 0xab;
const B = 0xcd;

let w: World;
let daemon: ResultPromise<{ reject: false; all: true }> | undefined;
let output = '';
let capabilities: string[];

beforeAll(async () => {
  await stat('dist/src/cli/main.js').catch(() => {
    throw new Error('dist/ is missing: run `npm run build` (the test command does) before the e2e tests');
  });
  const unit = serviceDirectives(await readFile(NODE_UNIT, 'utf8'));
  capabilities = unit.get('CapabilityBoundingSet') ?? [];
  expect(capabilities.length).toBeGreaterThan(0);
  expect(unit.get('ProtectSystem')).toEqual(['strict']);
  expect(unit.get('PrivateTmp')).toEqual(['yes']);
  w = await World.start();
  const stateDir = path.join(w.root, 'state');
  await mkdir(stateDir);
  // The test slapd keeps its password below the host's /tmp, which the private /tmp hides (a real one is in /etc).
  const passwordFile = path.join(stateDir, 'ldap.password');
  await copyFile(w.cliEnv()['STONEY_LDAP_PASSWORD_FILE'] as string, passwordFile);
  daemon = spawnSandboxed({
    argv: [process.execPath, CLI, 'node'],
    writable: [w.root],
    capabilities,
    env: {
      ...w.cliEnv(), STONEY_LDAP_PASSWORD_FILE: passwordFile, STONEY_NODE_NAME: w.nodeName, STONEY_RUN_DIR: w.runDir, STONEY_FEED_STATE_DIR: stateDir,
      STONEY_CHANGE_FEED: 'poll', STONEY_POLL_INTERVAL_MS: '150', STONEY_LOG_LEVEL: 'info',
    },
  });
  daemon.all?.on('data', (d: Buffer) => (output += d.toString()));
}, 180_000);

afterAll(async () => {
  if (daemon?.pid !== undefined && daemon.exitCode === null) {
    daemon.kill('SIGTERM');
    await daemon;
  }
  await w?.cleanup();
});

describe('the node daemon inside the node unit\'s sandbox', () => {
  it('runs with exactly the unit\'s capabilities and no_new_privs', async () => {
    // started once it holds the node lock
    await w.waitFor(async () => daemon?.exitCode !== null || (await stat(path.join(w.runDir, `node-${w.nodeName}.lock`)).then(() => true, () => false)), 30_000);
    expect(daemon?.exitCode, output).toBeNull();
    const status = await readFile(`/proc/${daemon!.pid}/status`, 'utf8');
    expect(statusMask(status, 'CapBnd')).toBe(capMask(capabilities));
    expect(statusMask(status, 'CapEff')).toBe(capMask(capabilities));
    expect(status).toMatch(/^NoNewPrivs:\s+1$/m);
    // the sandbox is real: the daemon's /etc is read-only, its /tmp empty and private
    const probe = await run('nsenter', ['--target', String(daemon!.pid), '--mount', '--', 'sh', '-c', 'touch /etc/stoney-sandbox-probe 2>&1; ls -A /tmp | wc -l'], { okExitCodes: [0, 1] });
    expect(probe.stdout).toMatch(/Read-only file system/);
    await expect(stat('/etc/stoney-sandbox-probe')).rejects.toThrow(/ENOENT/);
  });

  // Images and directories owned by another user with owner-only modes: root
  // chmods what it does not own (CAP_FOWNER) and reads and enters what only
  // that owner may (CAP_DAC_OVERRIDE), as with images libvirt-qemu owns.
  it.each([
    ['root:vm-storage, 0640/0750 (the world\'s defaults)', 'sbx', []],
    ['nobody:nogroup, 0600/0700', 'sbxn', [
      'sstVirtualizationDiskImageOwner: nobody', 'sstVirtualizationDiskImageGroup: nogroup', 'sstVirtualizationDiskImagePermission: 600',
      'sstVirtualizationDiskImageDirectoryOwner: nobody', 'sstVirtualizationDiskImageDirectoryGroup: nogroup', 'sstVirtualizationDiskImageDirectoryPermission: 700',
    ]],
  ])('backs up a running VM and restores it (restore XML in the private /tmp); files %s', async (_what, short, backupAttributes) => {
    const vm = await w.addVm(short, { running: true, pattern: A, backupAttributes });
    const leaf = '20261130T031500Z';
    await w.backupOk(vm.name, leaf);
    await guestWrite(vm.name, 'vda', B, '0', '1M');
    const r = await runRestore({
      directory: w.directory, vm: (await w.directory.getVm(vm.name))!, leaf: await w.leaf(vm.name, leaf),
      policy: { ...defaultBatchPolicy, claimTimeoutMs: 60_000 }, logger: w.logger, pollMs: 100, decide: async () => ({ prefer: 'backup', overrides: {} }),
    });
    expect({ outcome: r.outcome, mode: r.leaf.mode, rv: r.leaf.returnValue }, output.slice(-3000)).toEqual({ outcome: 'restored', mode: 'finished', rv: 0 });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', A, '0', '1M')).toBe(true);
    expect(daemon?.exitCode, output).toBeNull();
  });
});
