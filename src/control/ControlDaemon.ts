import type { Logger } from 'pino';
import cron from 'node-cron';
import { DateTime } from 'luxon';
import { errorMessage } from '../domain/errors.js';
import { formatLeafName } from '../domain/leafName.js';
import { parseCron, plannedRunsBetween } from '../domain/cronSchedule.js';
import type { BackupDirectory, ChangeEvent, ChangeFeed, LeafEntry } from '../directory/types.js';
import { KeyedWorkQueue } from '../node/KeyedWorkQueue.js';
import { applyModeWrites } from './applyModeWrites.js';
import { batchDone, decideBatch, vmsBusyElsewhere, type BatchPolicy } from './decideBatch.js';
import { pruneLeaves } from './pruneLeaves.js';

export interface ControlDaemonOptions {
  directory: BackupDirectory;
  feed: ChangeFeed;
  logger: Logger;
  policy: BatchPolicy;
  /** IANA zone the sstCron* fields are read in; default: the host's */
  zone?: string;
  /** how often every unfinished batch is re-checked (timeouts), ms */
  sweepMs?: number;
  /** run the minute tick (off in tests that call scheduleDue themselves) */
  cronTick?: boolean;
}

/**
 * The control daemon: plans backups from each VM's schedule and walks the
 * batches through the protocol. Stateless apart from the directory: a
 * restarted (or standby) instance re-reads the leaves and carries on.
 */
export class ControlDaemon {
  private readonly log: Logger;
  private readonly queue: KeyedWorkQueue;
  private task: ReturnType<typeof cron.schedule> | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private lastTick: DateTime;
  private readonly warnedSchedules = new Set<string>();

  constructor(private readonly o: ControlDaemonOptions) {
    this.log = o.logger.child({ role: 'control' });
    this.queue = new KeyedWorkQueue((leaf) => this.reconcileBatch(leaf), 2, (leaf, err) =>
      this.log.error({ leaf, err: errorMessage(err) }, 'batch reconcile failed'),
    );
    this.lastTick = DateTime.utc().startOf('minute');
  }

  get zone(): string {
    return this.o.zone ?? DateTime.local().zoneName ?? 'UTC';
  }

  async start(): Promise<void> {
    await this.o.feed.start((e) => this.onChange(e));
    if (this.o.cronTick !== false) {
      this.task = cron.schedule('* * * * *', () => {
        const now = DateTime.utc();
        const from = this.lastTick;
        this.lastTick = now;
        void this.scheduleDue(from, now).catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'scheduling failed'));
      });
    }
    this.sweepTimer = setInterval(() => void this.sweep().catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'sweep failed')), this.o.sweepMs ?? 30_000);
    await this.sweep();
    this.log.info({ zone: this.zone }, 'control daemon started');
  }

  async stop(): Promise<void> {
    this.task?.stop();
    await this.task?.destroy();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    await this.o.feed.stop();
    await this.queue.stop();
    this.log.info('control daemon stopped');
  }

  idle(): Promise<void> {
    return this.queue.idle();
  }

  private onChange(e: ChangeEvent): void {
    if (e.kind === 'leaf') {
      const leaf = /^ou=([^,]+),/i.exec(e.dn)?.[1];
      if (leaf) this.queue.add(leaf, leaf);
    } else if (e.kind === 'resync') {
      void this.sweep().catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'sweep failed'));
    }
  }

  /**
   * Create the leaves of every backup planned in (from, to]: one leaf per VM
   * and planned instant, named after the instant in UTC. VMs planned for the
   * same instant share the leaf name and so form one batch.
   */
  async scheduleDue(from: DateTime, to: DateTime): Promise<string[]> {
    const created: string[] = [];
    for (const vm of await this.o.directory.listVms()) {
      let settings;
      try {
        settings = await this.o.directory.effectiveSettings(vm);
      } catch (err) {
        this.warnOnce(`${vm.name}:settings`, { vm: vm.name, err: errorMessage(err) }, 'VM has unusable backup settings; not scheduled');
        continue;
      }
      if (settings.excluded || !settings.cron?.active) continue;
      let spec;
      try {
        spec = parseCron(settings.cron);
      } catch (err) {
        this.warnOnce(`${vm.name}:${settings.cron.sourceDn}`, { vm: vm.name, source: settings.cron.sourceDn, err: errorMessage(err) }, 'cron fields do not parse; VM not scheduled');
        continue;
      }
      for (const run of plannedRunsBetween(spec, from, to, this.zone)) {
        const leaf = formatLeafName(run);
        try {
          if (await this.o.directory.createLeaf(vm.name, leaf)) {
            this.log.info({ vm: vm.name, leaf, schedule: spec.text, zone: this.zone }, 'backup planned');
            created.push(`${vm.name}/${leaf}`);
          }
        } catch (err) {
          this.log.error({ vm: vm.name, leaf, err: errorMessage(err) }, 'cannot create the backup leaf');
          continue;
        }
        this.queue.add(leaf, leaf);
      }
    }
    return created;
  }

  /** Re-check every batch that has not ended (timeouts, missed changes). */
  async sweep(): Promise<void> {
    const vms = await this.o.directory.listVms();
    const leaves = await this.o.directory.listLeavesOfVms(vms.map((v) => v.name));
    const open = new Set(leaves.filter((l) => !batchDone([l])).map((l) => l.leaf));
    for (const leaf of open) this.queue.add(leaf, leaf);
  }

  private async reconcileBatch(leafName: string): Promise<void> {
    const vms = await this.o.directory.listVms();
    const all = await this.o.directory.listLeavesOfVms(vms.map((v) => v.name));
    const batch = all.filter((l) => l.leaf === leafName);
    const writes = decideBatch(batch, this.o.policy, new Date(), vmsBusyElsewhere(all, leafName));
    if (writes.length > 0) {
      await applyModeWrites(this.o.directory, writes, this.log.child({ leaf: leafName }));
      this.queue.add(leafName, leafName); // look again at the new state
      return;
    }
    await this.pruneFinished(batch, vms);
  }

  private async pruneFinished(batch: LeafEntry[], vms: { name: string }[]): Promise<void> {
    for (const l of batch) {
      if (l.mode !== 'finished' || l.returnValue !== 0) continue;
      const vm = await this.o.directory.getVm(l.vm);
      if (vm && vms.some((v) => v.name === vm.name)) await pruneLeaves(this.o.directory, vm, this.log);
    }
  }

  private warnOnce(key: string, obj: object, msg: string): void {
    if (this.warnedSchedules.has(key)) return;
    this.warnedSchedules.add(key);
    this.log.error(obj, msg);
  }
}
