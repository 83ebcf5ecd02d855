import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { BackupModes, NodeStepModes, PruneModes, RestoreModes, type NodeStep } from '../domain/modes.js';
import { isRestoreMode } from '../../workflows/restoreMachine.js';
import { isDeleteMode } from '../../workflows/deleteMachine.js';
import { leafActive } from '../control/decideBatch.js';
import { vmBackupHealth } from '../control/backupHealth.js';
import type { LeafEntry } from '../directory/types.js';
import type { EffectiveSettings } from '../domain/settings.js';
import type { CopyFigures } from '../domain/copyRate.js';

/** What the control daemon's gauges read at scrape time: SiteModel has this shape. */
export interface SiteView {
  allVms(): Iterable<{ name: string }>;
  settingsOf(vm: { name: string }): EffectiveSettings;
  leavesOfVm(vm: string): LeafEntry[];
}

const nodeSteps = Object.keys(NodeStepModes) as NodeStep[];
/** Every (protocol, mode) a workflow can be open in: all exported, 0 included, so "none open" is a value, not an absence. */
const openModes: [string, string][] = [
  ...BackupModes.filter((m) => m !== 'finished').map((m): [string, string] => ['backup', m]),
  ...RestoreModes.map((m): [string, string] => ['restore', m]),
  ...PruneModes.map((m): [string, string] => ['delete', m]),
];
/** Seconds: a snapshot takes a second, a retain copy of big disks an hour. */
const stepBuckets = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 10800];
/** Seconds a guest stood still: tens of ms for a live snapshot, seconds for `save`. */
const downtimeBuckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/**
 * The Prometheus metrics of one daemon, in a registry of its own (so tests
 * and a process holding two daemons do not collide). Label values are
 * bounded: step names, results, modes and — only for the per-VM
 * timestamps the issue asks for — VM names; never leaf names.
 */
export class BackupMetrics {
  readonly registry = new Registry();
  private readonly stepsTotal = new Counter({
    name: 'stoney_backup_steps_total', help: 'Node steps ended, by step and result', labelNames: ['step', 'result'] as const, registers: [this.registry],
  });
  private readonly stepDuration = new Histogram({
    name: 'stoney_backup_step_duration_seconds', help: 'Wall time of node steps', labelNames: ['step'] as const, buckets: stepBuckets, registers: [this.registry],
  });
  private readonly downtime = new Histogram({
    name: 'stoney_backup_downtime_seconds', help: 'Time a guest was stopped or paused by a snapshot (its reported downtime)', buckets: downtimeBuckets, registers: [this.registry],
  });
  private readonly bytesCopied = new Counter({
    name: 'stoney_backup_bytes_copied_total', help: 'Bytes of disk images and state files copied by node steps', labelNames: ['step'] as const, registers: [this.registry],
  });
  private readonly directoryConnected = new Gauge({
    name: 'stoney_backup_directory_connected', help: '1 while the change feed is in sync with the directory', registers: [this.registry],
  });
  private readonly feedReconnects = new Counter({
    name: 'stoney_backup_change_feed_reconnects_total', help: 'Times the change feed got the directory back after losing it', registers: [this.registry],
  });
  /** the copies running now, per step (one per step run), and the rate each step's last copy ended at */
  private readonly copies = new Map<NodeStep, Set<{ bytesPerSecond: number; etaSeconds: number }>>(nodeSteps.map((s) => [s, new Set()]));
  private readonly lastCopyRate = new Map<NodeStep, number>();
  private readonly controlActive = new Gauge({
    name: 'stoney_backup_control_active', help: 'Control daemon: 1 while it holds the control lease and drives the site, 0 while standby', registers: [this.registry],
  });
  private everConnected = false;
  private site: SiteView | undefined;
  private stepTimeoutS = 0;
  private siteGauges = false;

  constructor(labels: { daemon: 'node' | 'control' }) {
    this.registry.setDefaultLabels(labels);
    collectDefaultMetrics({ register: this.registry });
    // Known series from the start: rate() and absent() work before the first step ends.
    for (const step of nodeSteps) {
      for (const result of ['ok', 'failed']) this.stepsTotal.inc({ step, result }, 0);
      this.bytesCopied.inc({ step }, 0);
    }
    this.directoryConnected.set(0);
    const { copies, lastCopyRate } = this;
    new Gauge({
      name: 'stoney_backup_copy_throughput_bytes_per_second',
      help: 'Bytes per second of the copies a step is making (over the last 20 s; summed when several VMs copy at once); when none runs, the rate its last copy ended at',
      labelNames: ['step'] as const, registers: [this.registry],
      collect() {
        for (const step of nodeSteps) {
          const running = [...(copies.get(step) ?? [])];
          this.set({ step }, running.length > 0 ? running.reduce((sum, c) => sum + c.bytesPerSecond, 0) : (lastCopyRate.get(step) ?? 0));
        }
      },
    });
    new Gauge({
      name: 'stoney_backup_copy_eta_seconds',
      help: 'Seconds until the slowest copy a step is making ends, at its current rate (0: none runs)',
      labelNames: ['step'] as const, registers: [this.registry],
      collect() {
        for (const step of nodeSteps) this.set({ step }, Math.max(0, ...[...(copies.get(step) ?? [])].map((c) => c.etaSeconds)));
      },
    });
    if (labels.daemon === 'control') this.controlActive.set(0);
  }

  /** Control daemon: it became active (holds the lease) or standby. */
  activeChanged(active: boolean): void {
    this.controlActive.set(active ? 1 : 0);
  }

  /**
   * A standby control daemon runs no change feed: whether its looks at the
   * lease reach the directory is its connection state (not a feed reconnect).
   */
  directoryReachable(reachable: boolean): void {
    this.directoryConnected.set(reachable ? 1 : 0);
  }

  /** A node step ended: count it, time it, and for a snapshot record the guest's stopped window. */
  stepEnded(step: NodeStep, ok: boolean, seconds: number, executionTime: Record<string, number>): void {
    this.stepsTotal.inc({ step, result: ok ? 'ok' : 'failed' });
    this.stepDuration.observe({ step }, seconds);
    const downtime = executionTime['downtime'];
    if (step === 'snapshot' && ok && downtime !== undefined) this.downtime.observe(downtime);
  }

  /**
   * The copies of one run of a node step (meterProgress): bytes are counted
   * as they are copied (a long copy moves the counter while it runs), and
   * its rate and time left show in the copy gauges until end().
   */
  copying(step: NodeStep): { report: (f: CopyFigures) => void; end: () => void } {
    const copy = { bytesPerSecond: 0, etaSeconds: 0 };
    const running = this.copies.get(step) as Set<typeof copy>;
    let measured = false;
    return {
      report: (f) => {
        if (f.newBytes > 0) this.bytesCopied.inc({ step }, f.newBytes);
        running.add(copy);
        if (f.bytesPerSecond !== undefined) {
          copy.bytesPerSecond = f.bytesPerSecond;
          measured = true;
        }
        if (f.etaSeconds !== undefined) copy.etaSeconds = f.etaSeconds; // unknown at a copy's first report: keep the last
      },
      end: () => {
        if (running.delete(copy) && measured) this.lastCopyRate.set(step, copy.bytesPerSecond);
      },
    };
  }

  /** The change feed's view of the directory (its onConnectionChange). */
  readonly connectionChanged = (connected: boolean): void => {
    this.directoryConnected.set(connected ? 1 : 0);
    if (connected && this.everConnected) this.feedReconnects.inc();
    if (connected) this.everConnected = true;
  };

  /**
   * Control daemon: the per-VM and per-mode gauges, computed from the site
   * held in memory at each scrape (no directory read, nothing to keep in step).
   */
  watchSite(site: SiteView | undefined, limits?: { maxRuntimeMs: number }, nowMs: () => number = () => Date.now()): void {
    // One set of gauges for the process; each term of an active control daemon brings its own site (a standby none).
    this.site = site;
    if (limits) this.stepTimeoutS = limits.maxRuntimeMs / 1000;
    if (this.siteGauges) return;
    this.siteGauges = true;
    const vmsOf = () => {
      const out: { name: string; excluded: boolean; leaves: LeafEntry[] }[] = [];
      const site = this.site;
      if (!site) return out;
      for (const vm of site.allVms()) {
        let excluded = false;
        try {
          excluded = site.settingsOf(vm).excluded;
        } catch {
          // bad settings: keep the VM in sight
        }
        out.push({ name: vm.name, excluded, leaves: site.leavesOfVm(vm.name) });
      }
      return out;
    };
    new Gauge({
      name: 'stoney_backup_last_success_timestamp_seconds', help: 'Planned instant of the VM\'s newest good backup (0: none); excluded VMs are left out', labelNames: ['vm'] as const, registers: [this.registry],
      collect() {
        this.reset();
        for (const vm of vmsOf()) {
          if (vm.excluded) continue; // an excluded VM must not trip "no recent backup" alerts
          const at = vmBackupHealth(vm.leaves).lastSuccess;
          this.set({ vm: vm.name }, at === undefined ? 0 : at.getTime() / 1000);
        }
      },
    });
    new Gauge({
      name: 'stoney_backup_last_failure_timestamp_seconds', help: 'Planned instant of the VM\'s newest failed backup (0: none)', labelNames: ['vm'] as const, registers: [this.registry],
      collect() {
        this.reset();
        for (const vm of vmsOf()) {
          const at = vmBackupHealth(vm.leaves).lastFailure;
          this.set({ vm: vm.name }, at === undefined ? 0 : at.getTime() / 1000);
        }
      },
    });
    new Gauge({
      name: 'stoney_backup_workflows', help: 'Leaves whose workflow is open, by protocol and mode', labelNames: ['protocol', 'mode'] as const, registers: [this.registry],
      collect() {
        this.reset();
        const counts = new Map<string, number>(openModes.map(([protocol, mode]) => [`${protocol}\u0000${mode}`, 0]));
        for (const vm of vmsOf()) {
          for (const l of vm.leaves) {
            if (!leafActive(l) && !isDeleteMode(l.mode)) continue;
            const protocol = isRestoreMode(l.mode) ? 'restore' : isDeleteMode(l.mode) ? 'delete' : 'backup';
            const key = `${protocol}\u0000${l.mode}`;
            counts.set(key, (counts.get(key) ?? 0) + 1);
          }
        }
        for (const [key, n] of counts) {
          const [protocol = '', mode = ''] = key.split('\u0000');
          this.set({ protocol, mode }, n);
        }
      },
    });
    new Gauge({
      name: 'stoney_backup_oldest_workflow_age_seconds',
      help: 'Seconds since the planned instant of the oldest running (not blocked) workflow of a VM that is not excluded, by protocol (0: none runs); what `check` warns about past STONEY_STEP_TIMEOUT_S',
      labelNames: ['protocol'] as const, registers: [this.registry],
      collect() {
        const now = nowMs();
        const oldest = { backup: 0, restore: 0 };
        for (const vm of vmsOf()) {
          if (vm.excluded) continue; // check skips them too
          for (const r of vmBackupHealth(vm.leaves).running) {
            const protocol = isRestoreMode(r.leaf.mode) ? 'restore' : 'backup';
            oldest[protocol] = Math.max(oldest[protocol], (now - r.plannedAt.getTime()) / 1000);
          }
        }
        for (const [protocol, age] of Object.entries(oldest)) this.set({ protocol }, age);
      },
    });
    const stepTimeoutS = () => this.stepTimeoutS;
    new Gauge({
      name: 'stoney_backup_step_timeout_seconds',
      help: 'STONEY_STEP_TIMEOUT_S of this daemon: a workflow running longer is late (check warns; the StoneyBackupRunningLong rule compares with it)',
      registers: [this.registry],
      collect() {
        this.set(stepTimeoutS());
      },
    });
    new Gauge({
      name: 'stoney_backup_blocked_vms', help: 'VMs with a workflow that stopped with an error and waits for a human', registers: [this.registry],
      collect() {
        this.set(vmsOf().filter((vm) => vmBackupHealth(vm.leaves).blocked.length > 0).length);
      },
    });
  }

  /** The text a scrape of /metrics gets. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
