/**
 * The RFC 4533 change feed against a real slapd (syncprov from ldif/config.ldif).
 * Every test checks what a daemon would see: the DNs delivered, the state
 * file, the feed's map; never which internal calls were made.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import path from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import pino from 'pino';
import { ldapAdd, ldapModify, ldapModifyConfig, LDIF_DIR, type PrivateSlapd } from '../helpers/slapd.js';
import { setUpSlapdTls, type SlapdTls } from '../helpers/tls.js';
import { useSlapdWithDirectory } from '../helpers/useSlapd.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { SyncReplChangeFeed, type SyncReplChangeFeedOptions } from '../../src/directory/SyncReplChangeFeed.js';
import { parseSyncCookie } from '../../src/directory/syncCookie.js';
import { DirectoryError } from '../../src/directory/DirectoryError.js';
import { KeyedWorkQueue } from '../../src/node/KeyedWorkQueue.js';
import type { ChangeEvent } from '../../src/directory/types.js';
import { ldifText, vmEntryLines } from '../helpers/directoryEntries.js';

const BASE = 'o=stepping-stone,c=ch';
const SERVICE = `ou=virtualization,ou=services,${BASE}`;
const VMS = `ou=virtual machines,${SERVICE}`;
const NODE = 'node-01.example.com';
const OTHER_NODE = 'node-02.example.com';
const POOL = '0f83f084-8080-413e-b558-b678e504836e';
const vmDn = (vm: string) => `sstVirtualMachine=${vm},${VMS}`;
const leafDn = (vm: string, leaf: string) => `ou=${leaf},ou=backup,${vmDn(vm)}`;

let slapd: PrivateSlapd;
let dir: LdapBackupDirectory;
let seq = 0;

useSlapdWithDirectory((s) => ({ slapd, dir } = s));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Collects events; waitFor resolves when a matching one arrived (or fails after a timeout, listing what came). */
class Recorder {
  events: (ChangeEvent & { at: number })[] = [];
  private waiters: { match: (e: ChangeEvent) => boolean; resolve: () => void }[] = [];
  readonly push = (e: ChangeEvent): void => {
    this.events.push({ ...e, at: performance.now() });
    this.waiters = this.waiters.filter((w) => {
      if (!w.match(e)) return true;
      w.resolve();
      return false;
    });
  };
  waitFor(match: (e: ChangeEvent) => boolean, timeoutMs = 10_000, since = 0): Promise<void> {
    if (this.events.slice(since).some(match)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching event within ${timeoutMs} ms; got ${JSON.stringify(this.events.slice(-20).map((e) => [e.kind, e.dn]))}`)), timeoutMs);
      this.waiters.push({ match, resolve: () => { clearTimeout(timer); resolve(); } });
    });
  }
  dns(kind: ChangeEvent['kind'] = 'leaf', since = 0): Set<string> {
    return new Set(this.events.slice(since).filter((e) => e.kind === kind).map((e) => e.dn.toLowerCase()));
  }
  get length(): number {
    return this.events.length;
  }
}

const is = (kind: ChangeEvent['kind'], dn = '') => (e: ChangeEvent) => e.kind === kind && e.dn.toLowerCase() === dn.toLowerCase();

function feedOptions(extra: Partial<SyncReplChangeFeedOptions> = {}): SyncReplChangeFeedOptions {
  return {
    url: slapd.url,
    bindDn: slapd.bindDn,
    passwordFile: slapd.passwordFile,
    baseDn: slapd.baseDn,
    scope: { node: NODE },
    reconnectMinMs: 50,
    reconnectMaxMs: 1_000,
    heartbeatIntervalMs: 1_000,
    heartbeatTimeoutMs: 2_000,
    stateFlushMs: 50,
    logger: pino({ level: process.env.STONEY_TEST_LOG ?? 'silent' }),
    ...extra,
  };
}

/** A fresh VM (unique name) with an ou=backup, on `node`. */
async function addVm(node = NODE): Promise<string> {
  const vm = `sync-${process.pid}-${++seq}`;
  await ldapAdd(slapd, ldifText(
    vmEntryLines(vmDn(vm), { name: vm, node, pool: POOL }),
    [`dn: ou=backup,${vmDn(vm)}`, 'objectClass: organizationalUnit', 'ou: backup'],
  ));
  return vm;
}

/** A node feed (NODE) and a control feed, started, each with its recorder. */
async function startNodeAndControlFeeds(): Promise<{ node: Recorder; all: Recorder; nodeFeed: SyncReplChangeFeed; allFeed: SyncReplChangeFeed }> {
  const node = new Recorder();
  const all = new Recorder();
  const nodeFeed = new SyncReplChangeFeed(feedOptions());
  const allFeed = new SyncReplChangeFeed(feedOptions({ scope: {} }));
  await nodeFeed.start(node.push);
  await allFeed.start(all.push);
  return { node, all, nodeFeed, allFeed };
}

async function readState(file: string): Promise<{ cookie: string | null; uuidToDn: Record<string, string> }> {
  return JSON.parse(await readFile(file, 'utf8')) as { cookie: string | null; uuidToDn: Record<string, string> };
}

const stateDns = (s: { uuidToDn: Record<string, string> }) => new Set(Object.values(s.uuidToDn).map((d) => d.toLowerCase()));

describe('SyncReplChangeFeed: what a daemon hears', () => {
  it('node scope: its leaves, VMs moving to or from it; control scope: all leaves and settings; resync at start', async () => {
    const mine = await addVm(NODE);
    const foreign = await addVm(OTHER_NODE);
    const { node, all, nodeFeed, allFeed } = await startNodeAndControlFeeds();
    try {
      expect(node.events.map((e) => e.kind)).toEqual(['resync']);
      expect(all.events.map((e) => e.kind)).toEqual(['resync']);

      const leaf = '20240101T000000Z';
      expect(await dir.createLeaf(mine, leaf)).toBe(true);
      await node.waitFor(is('leaf', leafDn(mine, leaf)));
      let mark = node.length;
      expect(await dir.casMode(leafDn(mine, leaf), 'initialize', 'snapshot')).toBe(true);
      await node.waitFor(is('leaf', leafDn(mine, leaf)), 5_000, mark);

      // another node's leaf: only the control side hears of it
      expect(await dir.createLeaf(foreign, leaf)).toBe(true);
      await all.waitFor(is('leaf', leafDn(foreign, leaf)));
      await sleep(200);
      expect(node.dns().has(leafDn(foreign, leaf).toLowerCase())).toBe(false);

      // the foreign VM moves here: the node hears `vm`, then its leaves
      mark = node.length;
      await ldapModify(slapd, `dn: ${vmDn(foreign)}\nchangetype: modify\nreplace: sstNode\nsstNode: ${NODE}\n`);
      await node.waitFor(is('vm', vmDn(foreign)), 5_000, mark);
      mark = node.length;
      expect(await dir.casMode(leafDn(foreign, leaf), 'initialize', 'snapshot')).toBe(true);
      await node.waitFor(is('leaf', leafDn(foreign, leaf)), 5_000, mark);
      // … and moves away again: `vm` once more, then silence about it
      mark = node.length;
      await ldapModify(slapd, `dn: ${vmDn(foreign)}\nchangetype: modify\nreplace: sstNode\nsstNode: ${OTHER_NODE}\n`);
      await node.waitFor(is('vm', vmDn(foreign)), 5_000, mark);
      mark = node.length;
      expect(await dir.casMode(leafDn(foreign, leaf), 'snapshot', 'snapshotting')).toBe(true);
      await all.waitFor(is('leaf', leafDn(foreign, leaf)), 5_000);
      await sleep(200);
      // (The feed restarted its search for the smaller VM set: the refresh may name the node's own leaves again.)
      expect(node.dns('leaf', mark).has(leafDn(foreign, leaf).toLowerCase())).toBe(false);
      expect([...nodeFeed.knownEntries.values()].map((d) => d.toLowerCase())).not.toContain(leafDn(foreign, leaf).toLowerCase());

      // settings: VM level (created by setExcluded) and global
      await dir.setExcluded(mine, true);
      await all.waitFor(is('settings', `ou=backup,${vmDn(mine)}`));
      await ldapModify(slapd, `dn: ou=backup,ou=configuration,${SERVICE}\nchangetype: modify\nreplace: sstBackupNumberOfIterations\nsstBackupNumberOfIterations: 2\n`);
      await all.waitFor(is('settings', `ou=backup,ou=configuration,${SERVICE}`));

      // deleted leaf
      mark = node.length;
      await dir.deleteLeaf(leafDn(mine, leaf));
      await node.waitFor(is('leaf', leafDn(mine, leaf)), 5_000, mark);
      expect([...nodeFeed.knownEntries.values()].map((d) => d.toLowerCase())).not.toContain(leafDn(mine, leaf).toLowerCase());
    } finally {
      await nodeFeed.stop();
      await allFeed.stop();
    }
    // stopped: silence
    const before = node.length;
    expect(await dir.createLeaf(mine, '20240101T000100Z')).toBe(true);
    await sleep(300);
    expect(node.length).toBe(before);
  });

  it("node scope: the server sends only the leaves of the node's VMs; a VM moved to the node brings its leaves", async () => {
    const mine = await addVm(NODE);
    const foreign = await addVm(OTHER_NODE);
    const leaves = Array.from({ length: 10 }, (_, i) => `20240301T0000${String(i).padStart(2, '0')}Z`);
    for (const l of leaves) expect(await dir.createLeaf(foreign, l)).toBe(true);
    expect(await dir.createLeaf(mine, leaves[0]!)).toBe(true);
    const { node, all, nodeFeed, allFeed } = await startNodeAndControlFeeds();
    // What the feed was sent: its map holds every entry the server delivered, wanted or not.
    const known = () => new Set([...nodeFeed.knownEntries.values()].map((d) => d.toLowerCase()));
    const foreignLeaves = () => [...known()].filter((d) => d.endsWith(`,ou=backup,${vmDn(foreign)}`.toLowerCase()));
    try {
      expect(known().has(leafDn(mine, leaves[0]!).toLowerCase())).toBe(true);
      expect(known().has(vmDn(foreign).toLowerCase())).toBe(true); // every VM entry: moves must be seen
      expect(foreignLeaves()).toEqual([]);

      // 20 changes of the other node's leaves: the control feed hears all, this node's feed none, not even on the wire.
      const mark = node.length;
      for (const l of leaves) expect(await dir.casMode(leafDn(foreign, l), 'initialize', 'snapshot')).toBe(true);
      for (const l of leaves) expect(await dir.casMode(leafDn(foreign, l), 'snapshot', 'snapshotting')).toBe(true);
      expect(await dir.casMode(leafDn(mine, leaves[0]!), 'initialize', 'snapshot')).toBe(true);
      await node.waitFor(is('leaf', leafDn(mine, leaves[0]!)), 5_000, mark);
      for (const l of leaves) await all.waitFor((e) => e.kind === 'leaf' && e.dn.toLowerCase() === leafDn(foreign, l).toLowerCase() && e.attributes?.['sstprovisioningmode']?.[0] === 'snapshotting');
      expect(node.events.slice(mark).map((e) => [e.kind, e.dn.toLowerCase()])).toEqual([['leaf', leafDn(mine, leaves[0]!).toLowerCase()]]);
      expect(foreignLeaves()).toEqual([]);

      // The VM moves here: the search starts over with it in the filter, its leaves arrive, then their changes.
      const moved = node.length;
      await ldapModify(slapd, `dn: ${vmDn(foreign)}\nchangetype: modify\nreplace: sstNode\nsstNode: ${NODE}\n`);
      await node.waitFor(is('resync'), 5_000, moved);
      expect(foreignLeaves().length).toBe(leaves.length);
      const after = node.length;
      expect(await dir.casMode(leafDn(foreign, leaves[0]!), 'snapshotting', 'snapshotted')).toBe(true);
      await node.waitFor(is('leaf', leafDn(foreign, leaves[0]!)), 5_000, after);
    } finally {
      await nodeFeed.stop();
      await allFeed.stop();
    }
  });

  it('node scope beyond maxFilteredVms: the server sends every leaf, the feed still tells only of its own', async () => {
    const mine = await addVm(NODE);
    const foreign = await addVm(OTHER_NODE);
    const leaf = '20240401T000000Z';
    for (const vm of [mine, foreign]) expect(await dir.createLeaf(vm, leaf)).toBe(true);
    const node = new Recorder();
    const feed = new SyncReplChangeFeed(feedOptions({ maxFilteredVms: 0 }));
    await feed.start(node.push);
    try {
      expect([...feed.knownEntries.values()].map((d) => d.toLowerCase())).toContain(leafDn(foreign, leaf).toLowerCase());
      const mark = node.length;
      expect(await dir.casMode(leafDn(foreign, leaf), 'initialize', 'snapshot')).toBe(true);
      expect(await dir.casMode(leafDn(mine, leaf), 'initialize', 'snapshot')).toBe(true);
      await node.waitFor(is('leaf', leafDn(mine, leaf)), 5_000, mark);
      expect(node.dns('leaf', mark)).toEqual(new Set([leafDn(mine, leaf).toLowerCase()]));
    } finally {
      await feed.stop();
    }
  });

  it('slapd killed and restarted under a running feed: reconnects, re-binds, resyncs, and no change is lost', async () => {
    const vm = await addVm();
    const leaves = Array.from({ length: 20 }, (_, i) => `20240201T0000${String(i).padStart(2, '0')}Z`);
    for (const l of leaves) expect(await dir.createLeaf(vm, l)).toBe(true);
    const rec = new Recorder();
    const feed = new SyncReplChangeFeed(feedOptions());
    await feed.start(rec.push);
    try {
      for (let round = 0; round < 2; round++) {
        const mark = rec.length;
        if (round === 0) await slapd.restart();
        else {
          // SIGKILL: no goodbye on the socket at all.
          process.kill(slapd.pid!, 'SIGKILL');
          await sleep(300);
          await slapd.halt();
          await slapd.start();
        }
        // Write at once: the feed may not be back yet; these must arrive anyway.
        const [from, to] = round === 0 ? ['initialize', 'snapshot'] : ['snapshot', 'snapshotting'];
        for (const l of leaves) expect(await dir.casMode(leafDn(vm, l), from, to)).toBe(true);
        await rec.waitFor(is('resync'), 15_000, mark);
        // (After a crash the feed may do a full reload and also name other VMs' leaves: harmless.)
        const ofVm = () => [...rec.dns('leaf', mark)].filter((d) => d.endsWith(`,${vmDn(vm).toLowerCase()}`)).sort();
        const end = Date.now() + 10_000;
        while (ofVm().length < leaves.length && Date.now() < end) await sleep(50);
        expect(ofVm()).toEqual(leaves.map((l) => leafDn(vm, l).toLowerCase()).sort());
        expect(feed.synced).toBe(true);
      }
    } finally {
      await feed.stop();
    }
  });

  it('restarted with its old state file: every change and delete made while it was down, and its map forgets the deleted', async () => {
    const vm = await addVm();
    const stateFile = path.join(slapd.dir, `state-${seq}.json`);
    for (const l of ['20240301T000000Z', '20240301T000100Z', '20240301T000200Z']) expect(await dir.createLeaf(vm, l)).toBe(true);
    const first = new SyncReplChangeFeed(feedOptions({ stateFile }));
    await first.start(() => undefined);
    await first.stop();
    const saved = await readState(stateFile);
    expect(parseSyncCookie(Buffer.from(saved.cookie ?? '', 'base64'))).toBeDefined();
    expect(stateDns(saved).has(leafDn(vm, '20240301T000200Z').toLowerCase())).toBe(true);

    // While it is down: one modified, one deleted, one added.
    expect(await dir.casMode(leafDn(vm, '20240301T000000Z'), 'initialize', 'snapshot')).toBe(true);
    await dir.deleteLeaf(leafDn(vm, '20240301T000200Z'));
    expect(await dir.createLeaf(vm, '20240301T000300Z')).toBe(true);

    const rec = new Recorder();
    const again = new SyncReplChangeFeed(feedOptions({ stateFile }));
    await again.start(rec.push);
    try {
      expect(rec.dns()).toEqual(new Set([
        leafDn(vm, '20240301T000000Z').toLowerCase(),
        leafDn(vm, '20240301T000200Z').toLowerCase(),
        leafDn(vm, '20240301T000300Z').toLowerCase(),
      ]));
      expect(rec.events.at(-1)?.kind).toBe('resync');
      const known = new Set([...again.knownEntries.values()].map((d) => d.toLowerCase()));
      expect(known.has(leafDn(vm, '20240301T000200Z').toLowerCase())).toBe(false);
      expect(known.has(leafDn(vm, '20240301T000300Z').toLowerCase())).toBe(true);
    } finally {
      await again.stop();
    }
    const after = await readState(stateFile);
    expect(stateDns(after).has(leafDn(vm, '20240301T000200Z').toLowerCase())).toBe(false);
    expect(stateDns(after).has(leafDn(vm, '20240301T000300Z').toLowerCase())).toBe(true);
  });

  it('a cookie from before a slapd restart or crash (session log lost, contextCSN maybe stale): full resync, nothing missed', async () => {
    for (const how of ['restart', 'SIGKILL'] as const) {
      const vm = await addVm();
      const stateFile = path.join(slapd.dir, `state-${seq}.json`);
      for (const l of ['20240401T000000Z', '20240401T000100Z']) expect(await dir.createLeaf(vm, l)).toBe(true);
      const first = new SyncReplChangeFeed(feedOptions({ stateFile }));
      await first.start(() => undefined);
      // More changes it hears of before it stops: its cookie is newer than anything slapd checkpointed.
      expect(await dir.createLeaf(vm, '20240401T000200Z')).toBe(true);
      await sleep(200);
      await first.stop();
      expect(await dir.casMode(leafDn(vm, '20240401T000000Z'), 'initialize', 'snapshot')).toBe(true);
      await dir.deleteLeaf(leafDn(vm, '20240401T000100Z'));
      // The session log lives in slapd's memory only: a restart loses it. A crash also loses the
      // contextCSN not yet checkpointed: slapd then answers our cookie with 53 "consumer state is newer".
      if (how === 'restart') await slapd.restart();
      else {
        process.kill(slapd.pid!, 'SIGKILL');
        await sleep(300);
        await slapd.halt();
        await slapd.start();
      }
      const rec = new Recorder();
      const again = new SyncReplChangeFeed(feedOptions({ stateFile }));
      await again.start(rec.push);
      try {
        // After a crash it is a full reload: it cannot tell unchanged leaves apart and reports them too.
        const changed = [leafDn(vm, '20240401T000000Z').toLowerCase(), leafDn(vm, '20240401T000100Z').toLowerCase()];
        if (how === 'restart') expect(rec.dns(), how).toEqual(new Set(changed));
        else expect([...rec.dns()], how).toEqual(expect.arrayContaining(changed));
        expect(rec.events.at(-1)?.kind).toBe('resync');
        expect([...again.knownEntries.values()].map((d) => d.toLowerCase())).not.toContain(leafDn(vm, '20240401T000100Z').toLowerCase());
        expect([...again.knownEntries.values()].map((d) => d.toLowerCase())).toContain(leafDn(vm, '20240401T000200Z').toLowerCase());
      } finally {
        await again.stop();
      }
    }
  });

  it('a garbage cookie, an ancient one, one from the future: full refresh reconciled against the map, then a good cookie', async () => {
    const cookies = [
      'this is not a cookie',
      'rid=000,csn=20000101000000.000000Z#000000#000#000000',
      // The directory went back in time (restored from a backup): slapd refuses with 53 "consumer state is newer than provider!".
      'rid=000,csn=20991231000000.000000Z#000000#000#000000',
    ];
    for (const cookie of cookies) {
      const vm = await addVm();
      const stateFile = path.join(slapd.dir, `state-${seq}.json`);
      for (const l of ['20240501T000000Z', '20240501T000100Z']) expect(await dir.createLeaf(vm, l)).toBe(true);
      const first = new SyncReplChangeFeed(feedOptions({ stateFile }));
      await first.start(() => undefined);
      await first.stop();
      const saved = JSON.parse(await readFile(stateFile, 'utf8')) as Record<string, unknown>;
      await writeFile(stateFile, JSON.stringify({ ...saved, cookie: Buffer.from(cookie).toString('base64') }));
      await dir.deleteLeaf(leafDn(vm, '20240501T000100Z'));

      const rec = new Recorder();
      const again = new SyncReplChangeFeed(feedOptions({ stateFile }));
      await again.start(rec.push);
      try {
        // The delete is reported although the server never said "delete": the map says it was there.
        expect(rec.dns().has(leafDn(vm, '20240501T000100Z').toLowerCase())).toBe(true);
        expect(rec.events.some((e) => e.kind === 'resync')).toBe(true);
        expect([...again.knownEntries.values()].map((d) => d.toLowerCase())).not.toContain(leafDn(vm, '20240501T000100Z').toLowerCase());
      } finally {
        await again.stop();
      }
      const after = await readState(stateFile);
      const good = Buffer.from(after.cookie ?? '', 'base64');
      expect(good.toString()).not.toBe(cookie);
      expect(parseSyncCookie(good), good.toString()).toBeDefined();
      expect(stateDns(after).has(leafDn(vm, '20240501T000100Z').toLowerCase())).toBe(false);
    }
  });

  it('a burst of 1,000 leaf changes across 200 VMs: every leaf delivered, each claimed exactly once, memory bounded by the entries', async () => {
    const vms: string[] = [];
    const ldif: string[] = [];
    for (let v = 0; v < 200; v++) {
      const vm = `burst-${process.pid}-${v}`;
      vms.push(vm);
      ldif.push(ldifText(vmEntryLines(vmDn(vm), { name: vm, node: NODE, pool: POOL, vmType: null })));
      ldif.push(`dn: ou=backup,${vmDn(vm)}\nobjectClass: organizationalUnit\nou: backup\n`);
      for (let l = 0; l < 5; l++) {
        ldif.push(`dn: ${leafDn(vm, `2024060${l + 1}T000000Z`)}\nobjectClass: organizationalUnit\nobjectClass: sstProvisioning\nou: 2024060${l + 1}T000000Z\nsstProvisioningMode: initialized\nsstProvisioningState: 0\nsstProvisioningExecutionDate: 0\n`);
      }
    }
    await ldapAdd(slapd, ldif.join('\n'));
    const allLeaves = vms.flatMap((vm) => [1, 2, 3, 4, 5].map((l) => leafDn(vm, `2024060${l}T000000Z`)));

    // The consumer a node daemon is: queue the key, re-read the leaf, claim by compare-and-swap.
    const claims = new Map<string, number>();
    const errors: string[] = [];
    const queue = new KeyedWorkQueue(async (dn) => {
      const leaf = await dir.getLeaf(dn);
      if (leaf?.mode === 'snapshot' && (await dir.casMode(dn, 'snapshot', 'snapshotting'))) claims.set(dn.toLowerCase(), (claims.get(dn.toLowerCase()) ?? 0) + 1);
    }, 8, (dn, err) => errors.push(`${dn}: ${String(err)}`));
    const rec = new Recorder();
    const feed = new SyncReplChangeFeed(feedOptions());
    await feed.start((e) => {
      rec.push(e);
      if (e.kind === 'leaf') queue.add(e.dn, e.dn.split(',')[2] ?? '');
    });
    try {
      const heapBefore = process.memoryUsage().heapUsed;
      const mark = rec.length;
      // Control writes the command on all 1,000 leaves, 20 at a time.
      let next = 0;
      await Promise.all(Array.from({ length: 20 }, async () => {
        while (next < allLeaves.length) {
          const dn = allLeaves[next++]!;
          expect(await dir.casMode(dn, 'initialized', 'snapshot')).toBe(true);
        }
      }));
      const end = Date.now() + 60_000;
      while (claims.size < allLeaves.length && Date.now() < end) await sleep(100);
      await queue.idle();
      expect(errors).toEqual([]);
      expect(rec.dns('leaf', mark).size).toBe(allLeaves.length);
      expect(claims.size).toBe(allLeaves.length);
      expect([...claims.values()].every((n) => n === 1)).toBe(true);
      for (const dn of allLeaves.slice(0, 50)) expect((await dir.getLeaf(dn))?.mode).toBe('snapshotting');
      // The feed keeps keys, not entries or changes: its map is the entries in scope.
      expect(feed.knownEntries.size).toBeLessThan(allLeaves.length + 400);
      expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(100 * 1024 * 1024);
    } finally {
      await feed.stop();
      await queue.stop();
    }
  });
});

/** A TCP proxy in front of slapd that can stop forwarding without closing anything (a peer gone silent). */
async function silentProxy(target: number): Promise<{ port: number; freeze(): void; close(): Promise<void> }> {
  const frozen = new Set<net.Socket>();
  const live = new Set<[net.Socket, net.Socket]>();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: target });
    const pair: [net.Socket, net.Socket] = [client, upstream];
    live.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => {
      live.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    freeze() {
      for (const [client, upstream] of live) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        client.pause();
        upstream.pause();
        frozen.add(client).add(upstream);
      }
      live.clear();
    },
    async close() {
      for (const s of frozen) s.destroy();
      for (const [a, b] of live) {
        a.destroy();
        b.destroy();
      }
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('SyncReplChangeFeed: dead peers, TLS, access rights', () => {
  it('notices a connection that went silent without a TCP reset (WhoAmI heartbeat) and reconnects', async () => {
    const vm = await addVm();
    const proxy = await silentProxy(slapd.port);
    const rec = new Recorder();
    const feed = new SyncReplChangeFeed(feedOptions({ url: `ldap://127.0.0.1:${proxy.port}/`, heartbeatIntervalMs: 200, heartbeatTimeoutMs: 400 }));
    await feed.start(rec.push);
    try {
      const mark = rec.length;
      proxy.freeze();
      const frozenAt = performance.now();
      expect(await dir.createLeaf(vm, '20240701T000000Z')).toBe(true); // sent into the void on the old connection
      await rec.waitFor(is('resync'), 5_000, mark);
      const resyncAt = rec.events.slice(mark).find((e) => e.kind === 'resync')!.at;
      expect(resyncAt - frozenAt).toBeLessThan(3_000);
      // The change made while the connection was dead arrives through the new one.
      await rec.waitFor(is('leaf', leafDn(vm, '20240701T000000Z')), 5_000, mark);
    } finally {
      await feed.stop();
      await proxy.close();
    }
  });

  describe('TLS with a CA made here', () => {
    let t: SlapdTls;

    beforeAll(async () => {
      t = await setUpSlapdTls(slapd);
      goodCa = t.goodCa;
      wrongCa = t.wrongCa;
    });

    afterAll(async () => {
      await t?.close();
    });

    let goodCa: string;
    let wrongCa: string;
    const variants = () => [
      { name: 'StartTLS on ldap://', url: slapd.url, startTls: true },
      { name: 'ldaps://', url: t.ldapsUrl, startTls: false },
    ];

    it('delivers changes over StartTLS and over ldaps:// with the CA verified', async () => {
      for (const v of variants()) {
        const vm = await addVm();
        const rec = new Recorder();
        const feed = new SyncReplChangeFeed(feedOptions({ url: v.url, startTls: v.startTls, caFile: goodCa }));
        await feed.start(rec.push);
        try {
          expect(await dir.createLeaf(vm, '20240801T000000Z')).toBe(true);
          await rec.waitFor(is('leaf', leafDn(vm, '20240801T000000Z')));
        } finally {
          await feed.stop();
        }
      }
    });

    it('refuses a server certificate from another CA with a clear error, at start', async () => {
      for (const v of variants()) {
        const feed = new SyncReplChangeFeed(feedOptions({ url: v.url, startTls: v.startTls, caFile: wrongCa }));
        const err = await feed.start(() => undefined).then(() => undefined, (e: unknown) => e);
        expect(err, v.name).toBeInstanceOf(DirectoryError);
        expect((err as DirectoryError).retryable).toBe(false);
        expect((err as Error).message).toMatch(/server certificate is not trusted/);
        expect((err as Error).message).toContain(wrongCa);
      }
      // No CA file: Node's bundled CAs do not know ours either.
      const feed = new SyncReplChangeFeed(feedOptions({ startTls: true }));
      await expect(feed.start(() => undefined)).rejects.toThrow(/not trusted.*system CA/);
    });
  });

  it('works as a node daemon identity under ldif/acl-example.ldif (read access, lifted size limit)', async () => {
    const nodeDn = `cn=${NODE},ou=service accounts,${BASE}`;
    await ldapModifyConfig(slapd, await readFile(path.join(LDIF_DIR, 'acl-example.ldif'), 'utf8'));
    await ldapAdd(slapd, [
      `dn: ou=service accounts,${BASE}\nobjectClass: organizationalUnit\nou: service accounts\n`,
      `dn: ou=groups,${BASE}\nobjectClass: organizationalUnit\nou: groups\n`,
      `dn: ${nodeDn}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: ${NODE}\nuserPassword: node-secret\n`,
      `dn: cn=stoney-backup-nodes,ou=groups,${BASE}\nobjectClass: groupOfNames\ncn: stoney-backup-nodes\nmember: ${nodeDn}\n`,
    ].join('\n'));
    const pw = path.join(slapd.dir, 'node.pw');
    await writeFile(pw, 'node-secret\n', { mode: 0o600 });
    // A size limit far below the number of entries the feed reads.
    await ldapModifyConfig(slapd, 'dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nreplace: olcSizeLimit\nolcSizeLimit: 3\n');
    try {
      const vm = await addVm();
      const rec = new Recorder();
      const feed = new SyncReplChangeFeed(feedOptions({ bindDn: nodeDn, passwordFile: pw }));
      await feed.start(rec.push);
      try {
        expect(feed.knownEntries.size).toBeGreaterThan(1_000);
        expect(await dir.createLeaf(vm, '20240901T000000Z')).toBe(true);
        await rec.waitFor(is('leaf', leafDn(vm, '20240901T000000Z')));
      } finally {
        await feed.stop();
      }
      const wrong = new SyncReplChangeFeed(feedOptions({ bindDn: nodeDn, password: 'nope', passwordFile: undefined }));
      await expect(wrong.start(() => undefined)).rejects.toThrow(/LDAP result 49/);
    } finally {
      await ldapModifyConfig(slapd, 'dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nreplace: olcSizeLimit\nolcSizeLimit: unlimited\n');
    }
  });
});
