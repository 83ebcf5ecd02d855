/**
 * Issue 13 items 6/7: the active control daemon is killed (SIGKILL) in the
 * middle of a batch of real backups (real node daemon, tiny VMs, real
 * slapd); the standby `stoney-backup control` process takes over within
 * 30 s and every backup finishes exactly once: one leaf per VM, every
 * control transition written once across both daemons, one backup on disk.
 */
import { describe, expect, it } from 'vitest';
import { mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { DateTime } from 'luxon';
import { STORAGE_POOL, type World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { backingFileOf } from '../helpers/libvirt.js';
import { ControlCli, controlEnv } from '../helpers/controlCli.js';

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

const STARTED = 'control daemon started';
const STANDBY = 'standby: another control daemon holds the lease';

/** The transitions a control daemon applied, as "vm to" → how often (both daemons' logs together). */
function appliedTransitions(daemons: ControlCli[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const d of daemons) {
    for (const l of d.logLines()) {
      if (l['applied'] !== true || typeof l['to'] !== 'string') continue;
      const key = `${String(l['vm'])} ${l['to']}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
  }
  return counts;
}

describe('control daemon fail-over in the middle of a batch', () => {
  it('SIGKILL of the active daemon: the standby takes over and every backup finishes exactly once', async () => {
    await stat('dist/src/cli/main.js').catch(() => {
      throw new Error('dist/ is missing: run `npm run build` first');
    });
    // The batch: the next minute with enough time left to start both daemons (UTC schedule).
    let at = DateTime.utc().startOf('minute').plus({ minutes: 1 });
    if (at.diffNow().as('seconds') < 20) at = at.plus({ minutes: 1 });
    const cron = `${at.minute} ${at.hour} * * *`;
    const leaf = at.toFormat("yyyyMMdd'T'HHmmss'Z'");
    const tiny = [];
    for (const short of ['ha1', 'ha2', 'ha3']) tiny.push(await w.addVm(short, { running: true, cron }));
    const vms = tiny.map((t) => t.name);

    const env = async (name: string) => {
      const dir = path.join(w.root, name);
      await mkdir(dir, { recursive: true });
      return controlEnv(w.slapd, dir, { STONEY_LOG_LEVEL: 'info', STONEY_MERGE_CONCURRENCY: '1' });
    };
    const first = new ControlCli('first', await env('control-a'));
    const daemons = [first];
    try {
      expect(await first.waitFor(STARTED, 30_000)).toBe(true);
      const second = new ControlCli('second', await env('control-b'));
      daemons.push(second);
      expect(await second.waitFor(STANDBY, 30_000)).toBe(true);

      // Wait for the batch to be under way: a VM past its snapshot, the batch not done.
      const modes = async () => Promise.all(vms.map(async (vm) => (await w.directory.listLeaves(vm)).map((l) => `${l.leaf}:${l.mode}`)));
      const midBatch = ['snapshotted', 'merge', 'merging', 'merged', 'retain', 'retaining', 'retained'];
      await w.waitFor(async () => (await modes()).flat().some((m) => midBatch.includes(m.split(':')[1]!)), at.diffNow().as('milliseconds') + 90_000);
      const before = (await modes()).flat();
      const killedAt = performance.now();
      await first.stop('SIGKILL');
      expect(before.filter((m) => m.endsWith(':finished')).length).toBeLessThan(vms.length);

      expect(await second.waitFor(STARTED, 30_000)).toBe(true);
      const takeoverMs = performance.now() - killedAt;
      expect(takeoverMs).toBeLessThan(30_000);

      for (const vm of vms) {
        const done = await w.waitForMode(vm, leaf, ['finished'], 180_000);
        expect({ vm, rv: done.returnValue }).toEqual({ vm, rv: 0 });
      }
      console.log(`fail-over mid-batch: killed with ${JSON.stringify(before)}; standby active after ${Math.round(takeoverMs)} ms`);

      // Exactly once: one leaf per VM, each control transition applied once, one backup on disk, VMs off their overlays.
      for (const vm of vms) expect((await w.directory.listLeaves(vm)).map((l) => l.leaf)).toEqual([leaf]);
      const applied = appliedTransitions(daemons);
      for (const vm of vms) {
        for (const to of ['initialized', 'snapshot', 'merge', 'retain', 'finished']) expect({ vm, to, n: applied.get(`${vm} ${to}`) }).toEqual({ vm, to, n: 1 });
      }
      expect([...applied.values()].every((n) => n === 1)).toBe(true);
      const planned = daemons.flatMap((d) => d.logLines().filter((l) => l['msg'] === 'backup planned').map((l) => String(l['vm']))).sort();
      expect(planned).toEqual([...vms].sort());
      for (const t of tiny) {
        expect(await readdir(path.join(w.backupRoot, 'vm-persistent', STORAGE_POOL, t.name))).toEqual([leaf]);
        expect(await backingFileOf(t.disks[0]!.path)).toBeUndefined();
      }
      // The survivor took the lease over (no release happened), planned the batch's minute again without adding a leaf,
      // and drove the rest from the leaves alone: every VM's finish is its write.
      expect(second.logLines().find((l) => l['msg'] === 'control lease acquired: this daemon is active')).toMatchObject({ how: 'take-over' });
      expect(second.logLines().find((l) => l['msg'] === 'took over: planned what the previous daemon may have missed')).toMatchObject({ created: 0 });
      expect(appliedTransitions([second]).get(`${vms[0]} finished`)).toBe(1);
      expect(await second.stop('SIGTERM')).toEqual({ exitCode: 0, signal: undefined });
    } finally {
      for (const d of daemons) if (!d.exited) await d.stop('SIGKILL');
    }
  }, 300_000);
});
