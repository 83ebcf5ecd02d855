/**
 * A real backup (slapd + libvirtd + QEMU) driven by the node and the control
 * daemon, both on the RFC 4533 sync feed, with slapd killed and restarted
 * while the backup waits between steps. The control daemon's periodic sweep
 * is set far beyond the test, so the daemons move only on what the feeds
 * deliver.
 */
import { describe, expect, it } from 'vitest';
import { World } from '../helpers/world.js';
import { useWorld } from '../helpers/useWorld.js';
import { backingFileOf, guestReadMatches } from '../helpers/libvirt.js';
import { virsh } from '../helpers/libvirt.js';
import { NodeDaemon } from '../../src/node/NodeDaemon.js';
import { ControlDaemon } from '../../src/control/ControlDaemon.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { BackupModes } from '../../src/domain/modes.js';
import type { LeafEntry } from '../../src/directory/types.js';
import { tappedSyncFeed, windowed } from '../helpers/daemonWindows.js';

const A = 0xab;
let w: World;
useWorld((x) => (w = x));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


describe('both daemons on the sync feed', () => {
  it('run a backup to finished: every step once and in protocol order, surviving slapd restarts between steps', async () => {
    const running = await w.addVm('syncrun', { running: true });
    const stopped = await w.addVm('syncoff', { running: false });
    const vms = [running.name, stopped.name];
    const leaf = '20261122T050000Z';

    // What the control side sees of each leaf, in order; and every successful claim by the node.
    const seenModes = new Map<string, string[]>();
    const seenTimes = new Map<string, Record<string, number>>();
    const timeRewrites: string[] = [];
    const claims = new Map<string, number>();
    const onRead = (l: LeafEntry) => {
      if (l.leaf !== leaf) return;
      const modes = seenModes.get(l.vm) ?? [];
      if (modes.at(-1) !== l.mode) modes.push(l.mode);
      seenModes.set(l.vm, modes);
      const times = seenTimes.get(l.vm) ?? {};
      for (const [k, v] of Object.entries(l.executionTime)) {
        if (times[k] !== undefined && times[k] !== v) timeRewrites.push(`${l.vm} ${k}: ${times[k]} → ${v}`);
        times[k] = v;
      }
      seenTimes.set(l.vm, times);
    };

    // Hold the control side's merge and retain commands until slapd has been through a restart.
    const held: { to: string; release: () => void }[] = [];
    let holding = new Set(['merge', 'retain']);
    const gate = (_dn: string, _from: string, to: string) => {
      if (!holding.has(to)) return Promise.resolve();
      return new Promise<void>((release) => held.push({ to, release }));
    };

    const nodeFeed = tappedSyncFeed(w, { node: w.nodeName }, 'node');
    const controlFeed = tappedSyncFeed(w, {}, 'control');
    controlFeed.onLeaf = onRead;
    const node = new NodeDaemon(w.nodeDaemonOptions(nodeFeed, windowed(w.directory, { onCas: (dn, _from, to) => { if (/ing$/.test(to)) claims.set(`${dn}|${to}`, (claims.get(`${dn}|${to}`) ?? 0) + 1); } })));
    const control = new ControlDaemon({
      directory: windowed(w.directory, { onRead, gate }),
      feed: controlFeed,
      logger: w.logger,
      policy: { ...defaultBatchPolicy, mergeConcurrency: 2 },
      cronTick: false,
      sweepMs: 3_600_000,
    });
    await node.start();
    await control.start();
    try {
      for (const vm of vms) expect(await w.directory.createLeaf(vm, leaf)).toBe(true);

      for (const [step, previous, kill] of [['merge', 'snapshotted', true], ['retain', 'merged', false]] as const) {
        // Between steps: the VMs reported the previous step and control is about to send the next
        // command (it writes one leaf after the other, so it holds at the first).
        const betweenSteps = async () => held.some((h) => h.to === step) && (await Promise.all(vms.map((vm) => w.leaf(vm, leaf)))).some((l) => l.mode === previous);
        const end = Date.now() + 120_000;
        while (!(await betweenSteps()) && Date.now() < end) await sleep(100);
        expect(await betweenSteps(), `control holds ${step} while a leaf is ${previous}`).toBe(true);
        const marks = [nodeFeed.events.length, controlFeed.events.length];
        if (kill) {
          process.kill(w.slapd.pid!, 'SIGKILL');
          await sleep(500);
          await w.slapd.halt();
          await w.slapd.start();
        } else {
          await w.slapd.restart();
        }
        await nodeFeed.resyncAfter(marks[0]!);
        await controlFeed.resyncAfter(marks[1]!);
        holding.delete(step);
        for (const h of held.splice(0)) h.release();
      }
      holding = new Set();

      for (const vm of vms) {
        const l = await w.waitForMode(vm, leaf, ['finished'], 180_000);
        expect({ vm, rv: l.returnValue }).toEqual({ vm, rv: 0 });
      }
      await control.idle();
      await node.idle();

      // Protocol order, no step back, no step twice.
      const order = BackupModes as readonly string[];
      for (const vm of vms) {
        const modes = seenModes.get(vm) ?? [];
        const idx = modes.map((m) => order.indexOf(m));
        expect(idx.every((i) => i >= 0), `${vm}: ${modes.join(' → ')}`).toBe(true);
        expect(idx.every((i, k) => k === 0 || i > idx[k - 1]!), `${vm}: ${modes.join(' → ')}`).toBe(true);
        expect(modes.at(-1)).toBe('finished');
        expect(Object.keys(seenTimes.get(vm) ?? {})).toEqual(expect.arrayContaining(['snapshot', 'merge', 'retain']));
      }
      if (process.env.STONEY_TEST_LOG) console.log(JSON.stringify({ seenModes: [...seenModes], seenTimes: [...seenTimes], claims: [...claims] }));
      expect(timeRewrites).toEqual([]);
      const leafDns = await Promise.all(vms.map(async (vm) => (await w.leaf(vm, leaf)).dn));
      for (const dn of leafDns) {
        for (const working of ['snapshotting', 'merging', 'retaining']) expect({ dn, working, n: claims.get(`${dn}|${working}`) }).toEqual({ dn, working, n: 1 });
      }

      // The world: both VMs back on their own images, the running one still seeing its data.
      expect(await virsh.domState(running.name)).toBe('running');
      expect(await virsh.domState(stopped.name)).toBe('shut off');
      for (const vm of [running, stopped]) expect(await backingFileOf(vm.disks[0]!.path)).toBeUndefined();
      expect(await guestReadMatches(running.name, 'vda', A, '0', '1M')).toBe(true);
    } finally {
      holding = new Set();
      for (const h of held.splice(0)) h.release();
      await control.stop();
      await node.stop();
    }
  });
});
