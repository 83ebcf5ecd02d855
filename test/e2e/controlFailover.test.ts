/**
 * Issue 13 items 6/7: the active control daemon is killed (SIGKILL) in the
 * middle of a batch of real backups (real node daemon, tiny VMs, real
 * slapd); a standby `stoney-backup control` process takes over within 30 s,
 * is itself stopped (SIGTERM) while the batch still runs, and the last
 * standby takes over at once. Every backup finishes exactly once: one leaf
 * per VM, every control transition written once across the three daemons,
 * one backup on disk.
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
  it('SIGKILL of the active daemon, then SIGTERM of its successor: every backup finishes exactly once', async () => {
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
      const third = new ControlCli('third', await env('control-c'));
      daemons.push(second, third);
      expect(await second.waitFor(STANDBY, 30_000)).toBe(true);
      expect(await third.waitFor(STANDBY, 30_000)).toBe(true);

      // Wait for the batch to be under way: a VM past its snapshot, the batch not done.
      const modes = async () => (await Promise.all(vms.map(async (vm) => (await w.directory.listLeaves(vm)).map((l) => `${l.leaf}:${l.mode}`)))).flat();
      const midBatch = ['snapshotted', 'merge', 'merging', 'merged', 'retain', 'retaining', 'retained'];
      await w.waitFor(async () => (await modes()).some((m) => midBatch.includes(m.split(':')[1]!)), at.diffNow().as('milliseconds') + 90_000);
      const atKill = await modes();
      const killedAt = performance.now();
      await first.stop('SIGKILL');
      expect(atKill.filter((m) => m.endsWith(':finished')).length).toBeLessThan(vms.length);

      // One of the two standbys takes over within 30 s…
      const end = Date.now() + 30_000;
      while (second.count(STARTED) + third.count(STARTED) === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      const takeoverMs = performance.now() - killedAt;
      expect(takeoverMs).toBeLessThan(30_000);
      const [next, last] = second.count(STARTED) > 0 ? [second, third] : [third, second];
      expect(next.logLines().find((l) => l['msg'] === 'control lease acquired: this daemon is active')).toMatchObject({ how: 'take-over' });

      // … and is stopped (SIGTERM) while the batch still runs: the last one claims the released lease at once.
      const atTerm = await modes();
      const termAt = performance.now();
      expect(await next.stop('SIGTERM')).toEqual({ exitCode: 0, signal: undefined });
      expect(await last.waitFor(STARTED, 15_000)).toBe(true);
      const handoverMs = performance.now() - termAt;
      expect(atTerm.filter((m) => m.endsWith(':finished')).length).toBeLessThan(vms.length);
      expect(last.logLines().find((l) => l['msg'] === 'control lease acquired: this daemon is active')).toMatchObject({ how: 'claim' });
      expect(handoverMs).toBeLessThan(15_000);

      for (const vm of vms) {
        const done = await w.waitForMode(vm, leaf, ['finished'], 180_000);
        expect({ vm, rv: done.returnValue }).toEqual({ vm, rv: 0 });
      }
      console.log(`fail-over mid-batch: SIGKILL at ${JSON.stringify(atKill)} → standby active after ${Math.round(takeoverMs)} ms; SIGTERM at ${JSON.stringify(atTerm)} → next active after ${Math.round(handoverMs)} ms`);

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
      // Each successor planned the batch's minute again without adding a leaf, and the last one drove the rest
      // from the leaves alone.
      for (const d of [next, last]) {
        expect(d.logLines().find((l) => l['msg'] === 'took over: planned what the previous daemon may have missed')).toMatchObject({ created: 0 });
      }
      expect(appliedTransitions([last]).size).toBeGreaterThan(0);
      expect(await last.stop('SIGTERM')).toEqual({ exitCode: 0, signal: undefined });
    } finally {
      for (const d of daemons) if (!d.exited) await d.stop('SIGKILL');
    }
  }, 300_000);
});
