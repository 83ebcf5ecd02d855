/**
 * A node daemon without a hypervisor, for the control bench: its own sync
 * feed (node scope) and directory session; on every change of one of its
 * leaves it reads the leaf fresh (as NodeDaemon does) and answers a command
 * at once: compare-and-swap to the -ing mode, then to the -ed mode with
 * return value 0, a timestamp and an execution time. Up to 4 leaves at once
 * (NodeDaemon's default step concurrency). It also notes when it first saw
 * each leaf, its snapshot command, and its end.
 */
import { connectDirectory } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { SyncReplChangeFeed } from '../../src/directory/SyncReplChangeFeed.js';
import { KeyedWorkQueue } from '../../src/node/KeyedWorkQueue.js';
import { protocolTimestamp } from '../../src/domain/leafName.js';

const steps: Record<string, [working: string, done: string, time: string]> = {
  snapshot: ['snapshotting', 'snapshotted', 'snapshot'],
  merge: ['merging', 'merged', 'merge'],
  retain: ['retaining', 'retained', 'retain'],
};

export interface SiteObservations {
  /** leaf DN → ms (performance.now()) when a node first saw it / saw it in snapshot / saw it finished */
  seen: Map<string, number>;
  snapshot: Map<string, number>;
  finished: Map<string, number>;
  errors: number;
}

export class SimulatedNode {
  private directory: LdapBackupDirectory | undefined;
  private feed: SyncReplChangeFeed | undefined;
  private readonly queue: KeyedWorkQueue;

  constructor(
    readonly name: string,
    private readonly connection: { url: string; bindDn: string; passwordFile: string; baseDn: string },
    private readonly seen: SiteObservations,
  ) {
    this.queue = new KeyedWorkQueue((dn) => this.answer(dn), 4, () => {
      this.seen.errors += 1;
    });
  }

  async start(): Promise<void> {
    this.directory = await connectDirectory(this.connection);
    this.feed = new SyncReplChangeFeed({ ...this.connection, scope: { node: this.name }, fullResyncIntervalMs: 0 });
    await this.feed.start((e) => {
      if (e.kind === 'leaf') this.queue.add(e.dn, e.dn);
    });
  }

  private async answer(dn: string): Promise<void> {
    const d = this.directory;
    if (!d) return;
    const leaf = await d.getLeaf(dn);
    if (!leaf) return;
    const now = performance.now();
    if (!this.seen.seen.has(dn)) this.seen.seen.set(dn, now);
    if (leaf.mode === 'finished') {
      if (!this.seen.finished.has(dn)) this.seen.finished.set(dn, now);
      return;
    }
    const step = steps[leaf.mode];
    if (!step) return;
    if (leaf.mode === 'snapshot' && !this.seen.snapshot.has(dn)) this.seen.snapshot.set(dn, now);
    const [working, done, time] = step;
    if (!(await d.casMode(dn, leaf.mode, working))) return; // someone else has it
    await d.casMode(dn, working, done, { state: protocolTimestamp(), returnValue: 0, executionTime: { [time]: 0.001 } });
  }

  async stop(): Promise<void> {
    await this.feed?.stop();
    await this.queue.stop();
    await this.directory?.close();
  }
}
