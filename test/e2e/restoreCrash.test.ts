/**
 * Issue 9 item 7 (d): a restore killed (SIGKILL, as a power loss of the
 * process) after it undefined the live VM, or after it moved the first
 * backup image over a live one. The node daemon's recovery at its next start
 * rolls the restore back: previous images in place, the live definition
 * defined again and the VM resumed from the state the restore saved it in —
 * nothing the guest wrote is lost. The leaf waits at restored (50) for a
 * human, and `restore --abort` acknowledges it. Real slapd, libvirt/QEMU and
 * the real CLI (`restore --local`) in a child process.
 */
import { describe, expect, it } from 'vitest';
import path from 'node:path';
import { execa } from 'execa';
import { STORAGE_POOL, type World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { backingFileOf, guestReadMatches, guestWrite, virsh } from '../helpers/libvirt.js';

const A = 0xab;
const B = 0xcd;
const CLI = path.resolve('bin/stoney-backup.js');

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

const env = (extra: Record<string, string> = {}) => ({ ...process.env, ...w.cliEnv(), STONEY_NODE_NAME: w.nodeName, STONEY_RUN_DIR: w.runDir, ...extra });

async function killedRestore(short: string, leaf: string, fault: string) {
  const tiny = await w.addVm(short, { targets: ['vda', 'vdb'], running: true, pattern: A });
  await w.backupOk(tiny.name, leaf);
  for (const t of ['vda', 'vdb']) await guestWrite(tiny.name, t, B, '0', '1M');
  await w.stopNodeDaemons();
  try {
    const r = await execa('node', [CLI, 'restore', tiny.name, leaf, '--yes', '--local'], { env: env({ STONEY_TEST_FAULT: fault }), reject: false });
    expect(r.signal).toBe('SIGKILL');
    expect((await w.leaf(tiny.name, leaf)).mode).toBe('restoring');
    expect(await virsh.domainExists(tiny.name)).toBe(false);
  } finally {
    await w.startNodeDaemon();
  }
  return tiny;
}

describe('a restore killed in the middle of its live part', () => {
  for (const [fault, short, leaf] of [
    ['restore:after-undefine', 'rkundef', '20261122T080000Z'],
    ['restore:after-move', 'rkmove', '20261122T080100Z'],
  ] as const) {
    it(`killed at ${fault}: the node's recovery rolls it back; the VM runs on with everything it had written`, async () => {
      const tiny = await killedRestore(short, leaf, fault);
      const after = await w.waitForMode(tiny.name, leaf, ['restored'], 120_000);
      expect(after.returnValue).toBe(50);
      expect(await virsh.domStateReason(tiny.name)).toBe('running (restored)');
      expect(await virsh.isPersistent(tiny.name)).toBe(true);
      for (const t of ['vda', 'vdb']) expect(await guestReadMatches(tiny.name, t, B, '0', '1M')).toBe(true);
      for (const d of tiny.disks) expect(await backingFileOf(d.path)).toBeUndefined();
      // Acknowledged: the backup is good again and the restore's files go.
      const ack = await execa('node', [CLI, 'restore', tiny.name, leaf, '--abort'], { env: env(), reject: false });
      expect({ code: ack.exitCode, err: ack.stderr }).toMatchObject({ code: 0 });
      expect((await w.leaf(tiny.name, leaf)).mode).toBe('finished');
      const retain = path.join(w.retainRoot, 'vm-persistent', STORAGE_POOL, tiny.name);
      await w.waitFor(async () => (await execa('find', [retain, '-type', 'f'], { reject: false })).stdout === '');
    });
  }
});
