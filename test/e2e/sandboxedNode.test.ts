import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFile, mkdir, readFile, readlink, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { World } from '../helpers/world.js';
import { guestReadMatches, guestWrite, virsh } from '../helpers/libvirt.js';
import { runRestore } from '../../src/control/runRestore.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { run } from '../../src/hypervisor/exec.js';
import { serviceDirectives } from '../helpers/systemdUnit.js';

/**
 * The node daemon does a backup and a restore of a running VM inside the
 * confinement deploy/stoney-backup-node.service gives it, rebuilt here without
 * systemd (this machine has no systemd as PID 1): a private mount namespace in
 * which every mount is read-only (ProtectSystem=strict) except the world's
 * roots (ReadWritePaths=, pointed at the world instead of /var/…), an empty
 * /tmp (PrivateTmp=: the restore XML goes there and virsh must still read it),
 * empty /root and /home (ProtectHome=), the capability bounding set read from
 * the unit, and no_new_privs (NoNewPrivileges=). Not rebuilt: the system call
 * filter, PrivateDevices= and the Protect*Kernel* settings (none of them is a
 * path or a capability the steps use; `systemd-analyze` checks their syntax).
 */
const CLI = path.resolve('bin/stoney-backup.js');
const NODE_UNIT = path.resolve('deploy/stoney-backup-node.service');
const A = 0xab;
const B = 0xcd;

/** Runs in the new mount namespace; $1 is the host's namespace (refused: never remount the host), $2 the bounding set, the rest the writable roots. */
const SANDBOX_SCRIPT = String.raw`
set -euo pipefail
host_ns=$1 caps=$2; shift 2
[[ $(readlink /proc/self/ns/mnt) != "$host_ns" ]] || { echo "not in a private mount namespace: refusing" >&2; exit 97; }
# ProtectSystem=strict: every mount read-only but the API file systems.
findmnt -rno TARGET | while read -r t; do
  case $t in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
  mount -o remount,bind,ro "$t" 2>/dev/null || true
done
# ReadWritePaths=
for p in "$@"; do mount --bind "$p" "$p"; mount -o remount,bind,rw "$p"; done
# PrivateTmp=yes
mount -t tmpfs -o mode=1777 tmpfs /tmp
# ProtectHome=yes
for h in /home /root; do [[ -d $h ]] && mount -t tmpfs -o ro,mode=0755 tmpfs "$h"; done
exec setpriv --bounding-set "$caps" --inh-caps -all --no-new-privs -- "$NODE_BIN" "$CLI_JS" node
`;

/** `CAP_CHOWN CAP_FOWNER` → `-all,+chown,+fowner` (setpriv's spelling). */
function boundingSetArg(unitValue: string[]): string {
  const caps = unitValue.flatMap((v) => v.split(/\s+/)).filter(Boolean).map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`);
  return ['-all', ...caps].join(',');
}

/** Capability bits of a `CAP_…` list, as /proc/<pid>/status shows them. */
const CAP_BITS: Record<string, number> = { CAP_CHOWN: 0, CAP_DAC_OVERRIDE: 1, CAP_DAC_READ_SEARCH: 2, CAP_FOWNER: 3, CAP_FSETID: 4, CAP_KILL: 5, CAP_SETGID: 6, CAP_SETUID: 7 };
function capMask(unitValue: string[]): bigint {
  return unitValue.flatMap((v) => v.split(/\s+/)).filter(Boolean).reduce((m, c) => {
    const bit = CAP_BITS[c];
    if (bit === undefined) throw new Error(`extend CAP_BITS with ${c}`);
    return m | (1n << BigInt(bit));
  }, 0n);
}

let w: World;
let daemon: ResultPromise | undefined;
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
  const hostNs = await readlink('/proc/self/ns/mnt');
  daemon = execa('unshare', ['--mount', '--propagation', 'private', 'bash', '-c', SANDBOX_SCRIPT, 'sandbox', hostNs, boundingSetArg(capabilities), w.root], {
    env: {
      ...w.cliEnv(), STONEY_LDAP_PASSWORD_FILE: passwordFile, STONEY_NODE_NAME: w.nodeName, STONEY_RUN_DIR: w.runDir, STONEY_FEED_STATE_DIR: stateDir,
      STONEY_CHANGE_FEED: 'poll', STONEY_POLL_INTERVAL_MS: '150', STONEY_LOG_LEVEL: 'info', NODE_BIN: process.execPath, CLI_JS: CLI,
    },
    reject: false,
    all: true,
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
    const field = (name: string) => BigInt(`0x${/^(\w+):\s+([0-9a-f]+)$/m.exec(status.split('\n').find((l) => l.startsWith(`${name}:`)) ?? '')?.[2] ?? 'ff'}`);
    expect(field('CapBnd')).toBe(capMask(capabilities));
    expect(field('CapEff')).toBe(capMask(capabilities));
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
