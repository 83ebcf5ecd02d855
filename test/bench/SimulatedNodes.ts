/**
 * The node daemons of a whole site without hypervisors, for the control
 * bench: ONE sync feed over all leaves (the control scope's, whose events
 * carry the leaf) and one session, and per node a work queue of 4 (the node
 * daemon's default step concurrency). Every command is answered at once as
 * a node daemon would: compare-and-swap to the -ing mode, then to the -ed
 * mode with return value 0, a timestamp and an execution time.
 *
 * One feed instead of one per node keeps the bench about the control
 * plane: with a feed per node every node parses every change of the site
 * (the fan-out noted in the report), and on a 2-core machine the 50
 * simulated nodes would then take most of the CPU the control daemon and
 * slapd are measured on.
 */
import { connectDirectory } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { SyncReplChangeFeed } from '../../src/directory/SyncReplChangeFeed.js';
import { leafFromAttributes } from '../../src/directory/entryMapping.js';
import type { LeafEntry } from '../../src/directory/types.js';
import { KeyedWorkQueue } from '../../src/node/KeyedWorkQueue.js';
import { protocolTimestamp } from '../../src/domain/leafName.js';

const steps: Record<string, [working: string, done: string, time: string]> = {
  snapshot: ['snapshotting', 'snapshotted', 'snapshot'],
  merge: ['merging', 'merged', 'merge'],
  retain: ['retaining', 'retained', 'retain'],
};

export interface SiteObservations {
  /** leaf DN → ms (performance.now()) when the nodes first saw it / its snapshot command / its end */
  seen: Map<string, number>;
  snapshot: Map<string, number>;
  finished: Map<string, number>;
  errors: number;
}

export class SimulatedNodes {
  private directory: LdapBackupDirectory | undefined;
  private feed: SyncReplChangeFeed | undefined;
  private readonly queues = new Map<string, KeyedWorkQueue>();
  /** the latest state the feed delivered per leaf DN */
  private readonly latest = new Map<string, LeafEntry>();

  constructor(
    private readonly connection: { url: string; bindDn: string; passwordFile: string; baseDn: string },
    private readonly nodeOf: (vm: string) => string,
    private readonly seen: SiteObservations,
  ) {}

  async start(): Promise<void> {
    this.directory = await connectDirectory(this.connection);
    this.feed = new SyncReplChangeFeed({ ...this.connection, scope: {}, fullResyncIntervalMs: 0 });
    await this.feed.start((e) => {
      if (e.kind !== 'leaf' || !e.attributes) return;
      const leaf = leafFromAttributes(e.dn, e.attributes);
      this.latest.set(e.dn, leaf);
      this.observe(leaf);
      if (!steps[leaf.mode]) return;
      this.queueOf(this.nodeOf(leaf.vm)).add(e.dn, leaf.vm);
    });
  }

  private queueOf(node: string): KeyedWorkQueue {
    let q = this.queues.get(node);
    if (!q) {
      q = new KeyedWorkQueue((dn) => this.answer(dn), 4, () => {
        this.seen.errors += 1;
      });
      this.queues.set(node, q);
    }
    return q;
  }

  private observe(leaf: LeafEntry): void {
    const now = performance.now();
    if (!this.seen.seen.has(leaf.dn)) this.seen.seen.set(leaf.dn, now);
    if (leaf.mode === 'snapshot' && !this.seen.snapshot.has(leaf.dn)) this.seen.snapshot.set(leaf.dn, now);
    if (leaf.mode === 'finished' && !this.seen.finished.has(leaf.dn)) this.seen.finished.set(leaf.dn, now);
  }

  private async answer(dn: string): Promise<void> {
    const d = this.directory;
    const leaf = this.latest.get(dn);
    const step = leaf ? steps[leaf.mode] : undefined;
    if (!d || !leaf || !step) return;
    const [working, done, time] = step;
    if (!(await d.casMode(dn, leaf.mode, working))) return; // someone else has it
    await d.casMode(dn, working, done, { state: protocolTimestamp(), returnValue: 0, executionTime: { [time]: 0.001 } });
  }

  async stop(): Promise<void> {
    await this.feed?.stop();
    await Promise.all([...this.queues.values()].map((q) => q.stop()));
    await this.directory?.close();
  }
}
