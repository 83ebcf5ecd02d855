/**
 * The daemons on a replicated directory (two providers in mirror mode, both
 * URLs configured): a real backup (slapd pair + libvirtd + QEMU) driven by
 * the node and the control daemon on the sync feed, with the provider they
 * use killed mid-backup; and the node's feed narrowed to its own VMs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { World, vmDn } from '../helpers/world.js';
import { backingFileOf, guestReadMatches, virsh } from '../helpers/libvirt.js';
import { ldapModify } from '../helpers/slapd.js';
import { tappedSyncFeed, windowed, type TappedFeed } from '../helpers/daemonWindows.js';
import { NodeDaemon } from '../../src/node/NodeDaemon.js';
import { ControlDaemon } from '../../src/control/ControlDaemon.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { connectDirectory } from '../../src/directory/connect.js';
import type { SyncReplChangeFeed } from '../../src/directory/SyncReplChangeFeed.js';
import type { BackupDirectory } from '../../src/directory/types.js';

const A = 0xab;
const NODE2 = 'node-02.example.com';
let w: World;
/** each daemon's own session, as in separate processes */
const sessions: BackupDirectory[] = [];

beforeAll(async () => {
  w = await World.start({ replicated: true });
});
afterAll(async () => {
  for (const s of sessions.splice(0)) await s.close();
  await w?.cleanup();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function session(): Promise<BackupDirectory> {
  const s = await connectDirectory({ ...w.connection, connectTimeoutMs: 1_000 });
  sessions.push(s);
  return s;
}

async function nodeDaemon(feed: TappedFeed<SyncReplChangeFeed>, onClaim: (dn: string, to: string) => void): Promise<NodeDaemon> {
  return new NodeDaemon(w.nodeDaemonOptions(feed, windowed(await session(), { onCas: (dn, _from, to) => { if (/ing$/.test(to)) onClaim(dn, to); } })));
}

describe('a replicated directory', () => {
  it('one provider killed mid-backup: the backup finishes through the other, every step once', async () => {
    const running = await w.addVm('replrun', { running: true });
    const vm = running.name;
    const leaf = '20261122T060000Z';
    await w.pair!.waitReplicated(`ou=backup,${vmDn(vm)}`);

    // Hold the control side's merge command until the first provider is dead.
    let holdMerge = true;
    const held: (() => void)[] = [];
    const gate = (_dn: string, _from: string, to: string) => (holdMerge && to === 'merge' ? new Promise<void>((release) => held.push(release)) : Promise.resolve());
    const claims = new Map<string, number>();
    const nodeFeed = tappedSyncFeed(w, { node: w.nodeName }, 'node');
    const controlFeed = tappedSyncFeed(w, {}, 'control');
    const node = await nodeDaemon(nodeFeed, (dn, to) => claims.set(`${dn}|${to}`, (claims.get(`${dn}|${to}`) ?? 0) + 1));
    const control = new ControlDaemon({
      directory: windowed(await session(), { gate }),
      feed: controlFeed,
      logger: w.logger,
      policy: defaultBatchPolicy,
      cronTick: false,
      sweepMs: 3_600_000,
    });
    await node.start();
    await control.start();
    try {
      expect(await w.directory.createLeaf(vm, leaf)).toBe(true);
      const end = Date.now() + 120_000;
      while (held.length === 0 && Date.now() < end) await sleep(100);
      expect(held.length, 'control is about to send merge').toBe(1);
      expect((await w.leaf(vm, leaf)).mode).toBe('snapshotted');

      const marks = [nodeFeed.events.length, controlFeed.events.length];
      await w.pair!.providers[0].kill();
      // Both feeds resync on the second provider; then the backup goes on there.
      await nodeFeed.resyncAfter(marks[0]!);
      await controlFeed.resyncAfter(marks[1]!);
      holdMerge = false;
      for (const release of held.splice(0)) release();

      const l = await w.waitForMode(vm, leaf, ['finished'], 180_000);
      expect(l.returnValue).toBe(0);
      await control.idle();
      await node.idle();
      for (const working of ['snapshotting', 'merging', 'retaining']) expect({ working, n: claims.get(`${l.dn}|${working}`) }).toEqual({ working, n: 1 });
      expect(await virsh.domState(vm)).toBe('running');
      expect(await backingFileOf(running.disks[0]!.path)).toBeUndefined();
      expect(await guestReadMatches(vm, 'vda', A, '0', '1M')).toBe(true);

      // The first provider, back, has the whole backup.
      await w.pair!.providers[0].start();
      await w.pair!.waitReplicated(l.dn, '(sstProvisioningMode=finished)');
    } finally {
      holdMerge = false;
      for (const release of held.splice(0)) release();
      await control.stop();
      await node.stop();
      await w.pair!.providers[0].start();
    }
  });

  it("a node daemon's feed hears nothing of another node's leaves, claims its own commands, and picks up a VM moved to it", async () => {
    const mine = (await w.addVm('replmine', { running: false, noDomain: true })).name;
    const moving = (await w.addVm('replmove', { running: false, noDomain: true, node: NODE2 })).name;
    // Written to the first provider; the sessions may be on the second since the test above.
    for (const vm of [mine, moving]) await w.pair!.waitReplicated(`ou=backup,${vmDn(vm)}`);
    const feed = tappedSyncFeed(w, { node: w.nodeName }, 'node-filter');
    const claims: string[] = [];
    const node = await nodeDaemon(feed, (dn, to) => claims.push(`${dn}|${to}`));
    await node.start();
    const leafEvents = (vm: string, since: number) => feed.events.slice(since).filter((e) => e.kind === 'leaf' && e.dn.toLowerCase().includes(`,sstvirtualmachine=${vm.toLowerCase()},`));
    try {
      const mark = feed.events.length;
      // Another node's VM: a whole backup's worth of leaf changes, none reaches this node's feed.
      const foreignLeaf = '20261122T061000Z';
      expect(await w.directory.createLeaf(moving, foreignLeaf)).toBe(true);
      const foreignDn = (await w.leaf(moving, foreignLeaf)).dn;
      for (const [from, to] of [['initialize', 'initialized'], ['initialized', 'snapshot'], ['snapshot', 'snapshotting'], ['snapshotting', 'snapshotted']]) {
        expect(await w.directory.casMode(foreignDn, from!, to!)).toBe(true);
      }
      // Its own VM: the command is claimed (a VM libvirt does not know: the snapshot fails with 23, but it ran).
      const ownLeaf = '20261122T061100Z';
      expect(await w.directory.createLeaf(mine, ownLeaf)).toBe(true);
      const ownDn = (await w.leaf(mine, ownLeaf)).dn;
      expect(await w.directory.casMode(ownDn, 'initialize', 'snapshot', { state: '0' })).toBe(true);
      expect((await w.waitForMode(mine, ownLeaf, ['snapshotted'])).returnValue).toBe(23);
      expect(claims).toContain(`${ownDn}|snapshotting`);
      await sleep(300);
      expect(leafEvents(moving, mark)).toEqual([]);
      // Not even sent: the feed's map holds every entry the server delivered, and none of these.
      expect([...feed.inner.knownEntries.values()].filter((dn) => dn.toLowerCase().endsWith(`,ou=backup,${vmDn(moving)}`.toLowerCase()))).toEqual([]);
      expect(leafEvents(mine, mark).length).toBeGreaterThan(0);

      // The VM moves to this node: its waiting command is claimed.
      expect(await w.directory.casMode(foreignDn, 'snapshotted', 'snapshot', { state: '0' })).toBe(true);
      await ldapModify(w.slapd, `dn: ${vmDn(moving)}\nchangetype: modify\nreplace: sstNode\nsstNode: ${w.nodeName}\n`);
      expect((await w.waitForMode(moving, foreignLeaf, ['snapshotted'], 30_000)).returnValue).toBe(23);
      expect(claims).toContain(`${foreignDn}|snapshotting`);
      // … and its leaves' later changes reach the feed.
      const after = feed.events.length;
      const next = '20261122T061200Z';
      expect(await w.directory.createLeaf(moving, next)).toBe(true);
      const deadline = Date.now() + 10_000;
      while (leafEvents(moving, after).length === 0 && Date.now() < deadline) await sleep(50);
      expect(leafEvents(moving, after).length).toBeGreaterThan(0);
    } finally {
      await node.stop();
    }
  });
});
