/**
 * Windows onto what the daemons see, for e2e tests that drive the real
 * daemons: a change feed that records what it delivered, and a
 * BackupDirectory that reports reads and compare-and-swaps (and may hold one).
 * Both pass everything through unchanged.
 */
import path from 'node:path';
import { leafFromAttributes } from '../../src/directory/entryMapping.js';
import type { LeafScope } from '../../src/directory/leafScan.js';
import { SyncReplChangeFeed } from '../../src/directory/SyncReplChangeFeed.js';
import type { BackupDirectory, ChangeEvent, ChangeFeed, LeafEntry, SiteSnapshot } from '../../src/directory/types.js';
import type { World } from './world.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A feed that also tells the test what it delivered (resyncs after a
 * restart) and, through `onLeaf`, every leaf state it hands over with an
 * event (the control scope's events carry the entry: that is what the
 * control daemon sees of a leaf).
 */
export class TappedFeed<F extends ChangeFeed = ChangeFeed> implements ChangeFeed {
  readonly events: ChangeEvent[] = [];
  onLeaf: ((l: LeafEntry) => void) | undefined;
  constructor(readonly inner: F) {}
  start(onChange: (e: ChangeEvent) => void): Promise<void> {
    return this.inner.start((e) => {
      this.events.push(e);
      if (e.kind === 'leaf' && e.attributes) this.onLeaf?.(leafFromAttributes(e.dn, e.attributes));
      onChange(e);
    });
  }
  stop(): Promise<void> {
    return this.inner.stop();
  }
  async resyncAfter(mark: number, timeoutMs = 30_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!this.events.slice(mark).some((e) => e.kind === 'resync')) {
      if (Date.now() > end) throw new Error(`no resync within ${timeoutMs} ms after the restart`);
      await sleep(50);
    }
  }
}

/**
 * The BackupDirectory, seen through a window: `onRead` gets every leaf a
 * daemon reads, `gate` may hold a compare-and-swap before it is sent, and
 * `onCas` hears each successful one (a change of the world, not a call count).
 */
export function windowed(dir: BackupDirectory, hooks: {
  onRead?: (l: LeafEntry) => void;
  gate?: (dn: string, from: string, to: string) => Promise<void>;
  onCas?: (dn: string, from: string, to: string) => void;
}): BackupDirectory {
  return new Proxy(dir, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function') return value;
      const fn = value as (...args: unknown[]) => unknown;
      if (prop === 'casMode') {
        return async (dn: string, from: string, to: string, ...rest: unknown[]) => {
          await hooks.gate?.(dn, from, to);
          const ok = (await fn.apply(target, [dn, from, to, ...rest])) as boolean;
          if (ok) hooks.onCas?.(dn, from, to);
          return ok;
        };
      }
      if (prop === 'loadSite') {
        // The control daemon's full read (start, resync): its leaves are what it sees then.
        return async (...args: unknown[]) => {
          const site = (await fn.apply(target, args)) as SiteSnapshot;
          for (const e of site.leaves) hooks.onRead?.(leafFromAttributes(e.dn, e.attributes));
          return site;
        };
      }
      if (prop === 'getLeaf' || prop === 'listLeaves' || prop === 'listLeavesOfVms') {
        return async (...args: unknown[]) => {
          const r = (await fn.apply(target, args)) as LeafEntry | LeafEntry[] | undefined;
          for (const l of Array.isArray(r) ? r : r ? [r] : []) hooks.onRead?.(l);
          return r;
        };
      }
      return fn.bind(target);
    },
  });
}

/** A daemon's sync feed in a world, recorded: quick reconnects and heartbeat, state in the world's run directory. */
export function tappedSyncFeed(w: World, scope: LeafScope, name: string): TappedFeed<SyncReplChangeFeed> {
  return new TappedFeed(new SyncReplChangeFeed({
    ...w.connection,
    scope,
    stateFile: path.join(w.root, 'run', `feed-${name}.json`),
    logger: w.logger,
    reconnectMinMs: 100,
    reconnectMaxMs: 2_000,
    heartbeatIntervalMs: 1_000,
    heartbeatTimeoutMs: 3_000,
    // The safety-net resync must not be what carries the backup in these tests.
    fullResyncIntervalMs: 0,
  }));
}
