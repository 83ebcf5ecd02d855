import { backupSucceeded } from '../../workflows/backupMachine.js';
import type { Logger } from 'pino';
import cron from 'node-cron';
import { DateTime } from 'luxon';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../domain/errors.js';
import { formatLeafName } from '../domain/leafName.js';
import { parseCron, plannedRunsBetween, type CronSpec } from '../domain/cronSchedule.js';
import type { BackupDirectory, ChangeEvent, ChangeFeed, ModeChangeExtras } from '../directory/types.js';
import { KeyedWorkQueue } from '../node/KeyedWorkQueue.js';
import { applyModeWrites } from './applyModeWrites.js';
import { batchDone, decideBatch, vmsBusyElsewhere, type BatchPolicy, type ModeWrite } from './decideBatch.js';
import { decideRestores, restoreAwaitsControl } from './decideRestores.js';
import { forEachLimited } from './forEachLimited.js';
import { pruneKnownLeaves } from './pruneLeaves.js';
import type { BackupMetrics } from '../metrics/BackupMetrics.js';
import { SiteModel } from './SiteModel.js';
import { ServerClock } from './ServerClock.js';
import { parseGeneralizedTime } from '../directory/entryMapping.js';
import type { Attributes } from '../domain/settings.js';

export interface ControlDaemonOptions {
  directory: BackupDirectory;
  feed: ChangeFeed;
  logger: Logger;
  policy: BatchPolicy;
  /** IANA zone the sstCron* fields are read in; default: the host's */
  zone?: string;
  /** how often every unfinished batch is re-checked (timeouts), ms; in memory, no search */
  sweepMs?: number;
  /** run the minute tick (off in tests that call scheduleDue themselves) */
  cronTick?: boolean;
  /** directory writes in flight at once (leaf creation, mode changes); default 16 */
  writeConcurrency?: number;
  /** a batch's reconcile waits this long first, so a burst of changes is decided on once, ms (default 20) */
  settleMs?: number;
  /** full reads of the site that may fail in a row before the daemon gives up (default 5) */
  maxReloadFailures?: number;
  /** gauges read from the site in memory at each scrape (STONEY_METRICS_LISTEN) */
  metrics?: BackupMetrics;
  /**
   * Taking over from another control daemon: the server time of its last
   * lease write. Backups planned from the minute before it on are planned
   * again at start (leaf names are deterministic, so those it created are
   * not created twice), so a minute it did not get to is not lost.
   */
  catchUpFrom?: Date;
  /** this host's clock (tests: a host clock off the server's); default Date.now */
  localNowMs?: () => number;
  /** the server's clock minus this host's, measured at start (the lease look); refined from the feed (ServerClock) */
  serverOffsetMs?: number;
}

/** How far back a take-over plans missed backups at most: a lease lasts seconds, not hours. */
const MAX_CATCH_UP_MINUTES = 10;

/**
 * The control daemon: plans backups from each VM's schedule and walks the
 * batches through the protocol.
 *
 * It keeps the site in memory (SiteModel): one full read at start and on
 * every resync of the change feed, then the feed's changes. Scheduling,
 * batch decisions, timeouts and pruning read only that picture; the
 * directory sees the writes, three searches per resync, and a read only for
 * a change the feed names without its content. The directory remains the
 * only memory of a workflow: a restarted (or standby) instance reads the
 * leaves and carries on.
 */
export class ControlDaemon {
  private readonly log: Logger;
  private readonly queue: KeyedWorkQueue;
  private readonly model: SiteModel;
  private readonly clock: ServerClock;
  private task: ReturnType<typeof cron.schedule> | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private lastTick: DateTime;
  private readonly warnedSchedules = new Set<string>();
  /** finished leaves whose VM has been pruned after them: a batch is re-decided often, pruning once is enough */
  private readonly pruned = new Set<string>();
  private readonly stopping = new AbortController();
  private reloading: Promise<void> | undefined;
  private reloadAgain = false;
  /** changes that arrived while a full read was on its way: applied again on top of it */
  private duringReload: ChangeEvent[] | undefined;
  private readonly reads = new Map<string, ChangeEvent>();
  private readingEntries = false;
  /** the feed has started; its resyncs now ask for a read */
  private ready = false;
  private scheduling: Promise<unknown> = Promise.resolve();
  private fatalError: ((err: Error) => void) | undefined;
  /** Settles with the error that made the daemon give up; the process should then exit non-zero. */
  readonly fatal: Promise<Error>;

  constructor(private readonly o: ControlDaemonOptions) {
    this.log = o.logger.child({ role: 'control' });
    this.model = new SiteModel(o.directory.baseDn);
    this.clock = new ServerClock(o.localNowMs, o.serverOffsetMs);
    o.metrics?.watchSite(this.model, { maxRuntimeMs: o.policy.stepTimeoutMs });
    this.queue = new KeyedWorkQueue((leaf) => this.reconcileBatch(leaf), 4, (leaf, err) =>
      this.log.error({ leaf, err: errorMessage(err) }, 'batch reconcile failed'),
    );
    this.lastTick = DateTime.utc().startOf('minute');
    this.fatal = new Promise((resolve) => {
      this.fatalError = resolve;
    });
  }

  get zone(): string {
    return this.o.zone ?? DateTime.local().zoneName ?? 'UTC';
  }

  /** VMs and leaves held in memory (for logs and tests). */
  get known(): { vms: number; leaves: number } {
    return { vms: this.model.vmCount, leaves: this.model.leafCount };
  }

  /** Starts the feed and reads the site; rejects if the site cannot be read. */
  async start(): Promise<void> {
    const t0 = performance.now();
    // The feed first, so no change between the read and the feed is lost; what it tells before
    // the read is applied again on top of it.
    this.duringReload = [];
    await this.o.feed.start((e) => this.onChange(e));
    this.ready = true;
    await this.reload(true);
    if (this.o.catchUpFrom !== undefined) await this.catchUp(this.o.catchUpFrom);
    if (this.o.cronTick !== false) {
      this.task = cron.schedule('* * * * *', () => {
        // The minute this tick stands for: the timer may fire a little before or after it, and a
        // backup planned for 03:00 must not wait for the 03:01 tick.
        const now = DateTime.utc().plus({ seconds: 30 }).startOf('minute');
        const from = this.lastTick;
        this.lastTick = now;
        this.scheduling = this.scheduleDue(from, now).catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'scheduling failed'));
      });
    }
    this.sweepTimer = setInterval(() => this.sweep(), this.o.sweepMs ?? 30_000);
    this.log.info({ zone: this.zone, ...this.known, startMs: Math.round(performance.now() - t0) }, 'control daemon started');
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    this.task?.stop();
    await this.task?.destroy();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    await this.o.feed.stop();
    await this.queue.stop();
    await this.scheduling;
    this.log.info('control daemon stopped');
  }

  idle(): Promise<void> {
    return this.queue.idle();
  }

  private get stopped(): boolean {
    return this.stopping.signal.aborted;
  }

  // ---- the picture of the site -------------------------------------------------

  private onChange(e: ChangeEvent): void {
    if (this.stopped) return;
    if (e.kind === 'resync') {
      // Before start's own read, a resync (the feed's first) asks for nothing more.
      if (this.ready) void this.reload(false).catch(() => undefined);
      return;
    }
    this.duringReload?.push(e);
    if (e.attributes === undefined && !e.deleted) {
      this.readLater(e);
      return;
    }
    this.apply(e);
  }

  private apply(e: ChangeEvent): void {
    if (e.kind === 'leaf') {
      if (e.deleted || e.attributes === undefined) this.model.removeLeaf(e.dn);
      else {
        this.model.putLeaf({ dn: e.dn, attributes: e.attributes });
        this.learnServerTime(e.dn, e.attributes);
      }
      const leaf = /^ou=([^,]+),/i.exec(e.dn)?.[1];
      if (leaf) this.queue.add(leaf, leaf);
    } else if (e.kind === 'vm') {
      if (e.deleted || e.attributes === undefined) this.model.removeVm(e.dn);
      else this.model.putVm({ dn: e.dn, attributes: e.attributes });
    } else if (e.kind === 'settings') {
      if (e.deleted || e.attributes === undefined) this.model.removeSettings(e.dn);
      else this.model.putSettings({ dn: e.dn, attributes: e.attributes });
    }
  }

  /** A feed that names only the entry (polling): read it, one at a time, each DN once. */
  private readLater(e: ChangeEvent): void {
    this.reads.set(`${e.kind}:${e.dn.toLowerCase()}`, e);
    if (this.readingEntries) return;
    this.readingEntries = true;
    void (async () => {
      try {
        for (const [key, ev] of this.reads) {
          this.reads.delete(key);
          if (this.stopped) return;
          try {
            const entry = await this.o.directory.readSiteEntry(ev.dn);
            this.apply({ ...ev, ...(entry ? { attributes: entry.attributes } : { deleted: true }) });
          } catch (err) {
            this.log.warn({ dn: ev.dn, err: errorMessage(err) }, 'cannot read a changed entry; the next resync will');
          }
        }
      } finally {
        this.readingEntries = false;
      }
    })();
  }

  /**
   * Read the whole site again (start, every resync of the feed). One read at
   * a time; a resync during a read makes one more read after it. A failing
   * read is retried with backoff; after maxReloadFailures in a row the
   * daemon gives up (`fatal`), so that its supervisor restarts it.
   */
  private reload(initial: boolean): Promise<void> {
    if (this.reloading) {
      this.reloadAgain = true;
      return this.reloading;
    }
    this.reloading = (async () => {
      let failures = 0;
      do {
        this.reloadAgain = false;
        if (this.stopped) return;
        const t0 = performance.now();
        this.duringReload ??= [];
        try {
          const site = await this.o.directory.loadSite();
          if (this.stopped) return;
          this.model.replaceAll(site);
          this.pruned.clear();
          // What changed meanwhile is at least as new as the read, unless its version says otherwise.
          for (const e of this.duringReload) if (e.attributes !== undefined || e.deleted) this.apply(e);
          failures = 0;
          this.log.info({ ...this.known, settings: site.settings.length, durationMs: Math.round(performance.now() - t0) }, 'read the site');
          this.sweep();
        } catch (err) {
          if (this.stopped) return;
          failures += 1;
          const limit = this.o.maxReloadFailures ?? 5;
          if (initial || failures >= limit) {
            const e = err instanceof Error ? err : new Error(String(err));
            if (!initial) {
              this.log.fatal({ err: errorMessage(err), failures }, 'cannot read the site; giving up');
              this.fatalError?.(e);
            }
            throw e;
          }
          const delay = Math.min(30_000, 1_000 * 2 ** (failures - 1));
          this.log.error({ err: errorMessage(err), failures, retryInMs: delay }, 'cannot read the site; retrying');
          await sleep(delay, undefined, { signal: this.stopping.signal }).catch(() => undefined);
          this.reloadAgain = true;
        } finally {
          this.duringReload = undefined;
        }
      } while (this.reloadAgain && !this.stopped);
    })().finally(() => {
      this.reloading = undefined;
    });
    return this.reloading;
  }

  // ---- scheduling ----------------------------------------------------------------

  /**
   * Create the leaves of every backup planned in (from, to]: one leaf per VM
   * and planned instant, named after the instant in UTC. VMs planned for the
   * same instant share the leaf name and so form one batch. From memory:
   * nothing is read when nothing is due.
   */
  async scheduleDue(from: DateTime, to: DateTime): Promise<string[]> {
    const runsBySchedule = new Map<string, { spec: CronSpec; runs: DateTime[] } | undefined>();
    const due: { vm: string; dn: string; leaf: string; schedule: string }[] = [];
    for (const vm of this.model.allVms()) {
      let settings;
      try {
        settings = this.model.settingsOf(vm);
      } catch (err) {
        this.warnOnce(`${vm.name}:settings`, { vm: vm.name, err: errorMessage(err) }, 'VM has unusable backup settings; not scheduled');
        continue;
      }
      if (settings.excluded || !settings.cron?.active) continue;
      const c = settings.cron;
      const key = `${c.minute} ${c.hour} ${c.day} ${c.month} ${c.dayOfWeek}`;
      if (!runsBySchedule.has(key)) {
        try {
          const spec = parseCron(c);
          runsBySchedule.set(key, { spec, runs: plannedRunsBetween(spec, from, to, this.zone) });
        } catch (err) {
          runsBySchedule.set(key, undefined);
          this.warnOnce(`${key}:${c.sourceDn}`, { source: c.sourceDn, err: errorMessage(err) }, 'cron fields do not parse; VMs with this schedule are not scheduled');
        }
      }
      const planned = runsBySchedule.get(key);
      if (!planned) {
        this.warnOnce(`${vm.name}:${c.sourceDn}`, { vm: vm.name, source: c.sourceDn }, 'cron fields do not parse; VM not scheduled');
        continue;
      }
      for (const run of planned.runs) due.push({ vm: vm.name, dn: vm.dn, leaf: formatLeafName(run), schedule: planned.spec.text });
    }
    const created: string[] = [];
    await forEachLimited(due, this.o.writeConcurrency ?? 16, this.stopping.signal, async (d) => {
      try {
        if (await this.o.directory.createLeaf(d.vm, d.leaf)) {
          const dn = `ou=${d.leaf},ou=backup,${d.dn}`;
          this.model.noteCreated(dn, d.vm, d.leaf, this.clock.now());
          this.clock.wrote(dn, 'initialize');
          this.log.info({ vm: d.vm, leaf: d.leaf, schedule: d.schedule, zone: this.zone }, 'backup planned');
          created.push(`${d.vm}/${d.leaf}`);
        }
      } catch (err) {
        this.log.error({ vm: d.vm, leaf: d.leaf, err: errorMessage(err) }, 'cannot create the backup leaf');
        return;
      }
      this.queue.add(d.leaf, d.leaf);
    });
    return created;
  }

  /** Plan what the previous active daemon may have missed: (its last lease write's minute − 1, this minute]. */
  private async catchUp(from: Date): Promise<void> {
    const now = DateTime.utc().startOf('minute');
    const earliest = now.minus({ minutes: MAX_CATCH_UP_MINUTES });
    let start = DateTime.fromJSDate(from, { zone: 'utc' }).startOf('minute').minus({ minutes: 1 });
    if (start < earliest) start = earliest;
    if (start > now) start = now.minus({ minutes: 1 });
    this.lastTick = now;
    const created = await this.scheduleDue(start, now);
    this.log.info({ from: start.toISO(), to: now.toISO(), created: created.length }, 'took over: planned what the previous daemon may have missed');
  }

  // ---- driving the batches ---------------------------------------------------------

  /** Re-check every batch that has not ended (timeouts, missed changes): in memory. */
  private sweep(): void {
    if (this.stopped) return;
    for (const name of this.model.batchNames()) {
      const batch = this.model.batch(name);
      if (!batchDone(batch) || batch.some(restoreAwaitsControl)) this.queue.add(name, name);
    }
  }

  private async reconcileBatch(leafName: string): Promise<void> {
    const settle = this.o.settleMs ?? 20;
    if (settle > 0) await sleep(settle);
    if (this.stopped) return;
    const batch = this.model.batch(leafName);
    if (batch.length === 0) return;
    // One workflow per VM: the other leaves of this batch's VMs, from memory.
    const others = this.model.otherLeavesOfVms(batch, leafName);
    const now = this.clock.now();
    const writes = [
      ...decideBatch(batch, this.o.policy, now, vmsBusyElsewhere(others, leafName), (vm) => this.model.nodeOf(vm)),
      // A restore runs on the leaf of the backup it restores, whichever client started it.
      ...decideRestores(batch, this.o.policy, now),
    ];
    if (writes.length > 0) {
      await applyModeWrites(this.o.directory, writes, this.log.child({ leaf: leafName }), {
        concurrency: this.o.writeConcurrency ?? 16,
        signal: this.stopping.signal,
        onApplied: (w: ModeWrite, extras: ModeChangeExtras) => {
          this.model.noteWritten(w.dn, w.expected, w.next, extras, this.clock.now());
          this.clock.wrote(w.dn, w.next);
        },
      });
      this.queue.add(leafName, leafName); // look again at the new state
      return;
    }
    await this.pruneFinished(batch);
  }

  /** Old leaves of the VMs whose backup in this batch finished: decided from memory. */
  private async pruneFinished(batch: { dn: string; vm: string; mode: string; returnValue: number | undefined }[]): Promise<void> {
    for (const l of batch) {
      if (this.stopped) return;
      if (!backupSucceeded(l)) continue;
      const vm = this.model.vm(l.vm);
      if (!vm || this.pruned.has(l.dn)) continue;
      let keep: number;
      try {
        keep = this.model.settingsOf(vm).backup.numberOfIterations;
      } catch {
        continue; // unusable settings: keep everything
      }
      const leaves = this.model.leavesOfVm(vm.name);
      const pruned = await pruneKnownLeaves(this.o.directory, vm.name, keep, leaves, this.log);
      this.pruned.add(l.dn);
      for (const name of pruned) {
        const gone = leaves.find((x) => x.leaf === name);
        if (gone) this.model.removeLeaf(gone.dn);
      }
    }
  }

  /** A leaf as the feed delivered it: if it is the echo of this daemon's own write, a sample of the server's clock. */
  private learnServerTime(dn: string, attributes: Attributes): void {
    const mode = attributes['sstprovisioningmode']?.[0];
    if (mode === undefined) return;
    const offset = this.clock.observed(dn, mode, parseGeneralizedTime(attributes['modifytimestamp']?.[0]));
    if (offset === undefined) return;
    const level = Math.abs(offset) >= 5_000 ? 'warn' : 'debug';
    this.log[level]({ offsetMs: offset }, 'the directory server clock differs from this host\'s; ages are judged by the server\'s');
  }

  private warnOnce(key: string, obj: object, msg: string): void {
    if (this.warnedSchedules.has(key)) return;
    this.warnedSchedules.add(key);
    this.log.error(obj, msg);
  }
}
