import type { Logger } from 'pino';
import { BackupError, errorCode, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { isLeafMode, NodeStepModes, type NodeStep } from '../domain/modes.js';
import { protocolTimestamp } from '../domain/leafName.js';
import { locateLayout } from './backupLocation.js';
import { isSafeName } from '../domain/names.js';
import { assertAllowedDirectories } from '../domain/allowedRoots.js';
import type { BackupDirectory, ChangeEvent, ChangeFeed, LeafEntry, ModeChangeExtras, VmEntry } from '../directory/types.js';
import type { Virsh } from '../hypervisor/Virsh.js';
import type { QemuImg } from '../hypervisor/QemuImg.js';
import { nodeClaim } from '../../workflows/backupMachine.js';
import { KeyedWorkQueue } from './KeyedWorkQueue.js';
import { NodeLock } from './NodeLock.js';
import { snapshotStep } from './snapshotStep.js';
import { mergeStep } from './mergeStep.js';
import { retainStep } from './retainStep.js';
import { recoverInterruptedStep } from './recoverInterruptedStep.js';
import { unretainSmallFilesStep } from './unretainSmallFilesStep.js';
import { unretainLargeFilesStep } from './unretainLargeFilesStep.js';
import { restoreStep } from './restoreStep.js';
import { deleteStep } from './deleteStep.js';
import { faultPoint } from './faultPoint.js';
import { StepHeartbeat } from './StepHeartbeat.js';
import { removeRestoreWorkDir } from './restoreWorkDir.js';
import { assertNoSymlinkBelow } from './safeFs.js';
import { isLeafName } from '../domain/leafName.js';
import { restoreNodeClaim } from '../../workflows/restoreMachine.js';
import { deleteNodeClaim } from '../../workflows/deleteMachine.js';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { exists } from './durableFs.js';
import type { StepContext, StepProgress, StepResult } from './StepContext.js';
import type { BackupMetrics } from '../metrics/BackupMetrics.js';
import { meterProgress } from './meterProgress.js';

export interface NodeDaemonOptions {
  nodeName: string;
  directory: BackupDirectory;
  feed: ChangeFeed;
  virsh: Virsh;
  qemuImg: QemuImg;
  imageRoots: string[];
  /** the backup, retain and RAM-disk settings must lie in these (STONEY_ALLOWED_ROOTS) */
  allowedRoots: readonly string[];
  logger: Logger;
  /** steps running at once on this node (never two for one VM) */
  concurrency?: number;
  /** where the per-node lock lives (default /run/stoney-backup) */
  runDir?: string;
  onProgress?: (p: StepProgress) => void;
  /** counts and times every step that ends (STONEY_METRICS_LISTEN) */
  metrics?: BackupMetrics;
  /** while a step reports progress, its leaf is touched at most this often (StepHeartbeat; default 60 s) */
  heartbeatMs?: number;
}

const steps: Record<NodeStep, (ctx: StepContext) => Promise<StepResult>> = {
  snapshot: snapshotStep,
  merge: mergeStep,
  retain: retainStep,
  unretainSmallFiles: unretainSmallFilesStep,
  unretainLargeFiles: unretainLargeFilesStep,
  restore: restoreStep,
  delete: deleteStep,
};

/** The mode a node claims a command with, from whichever protocol the command belongs to. */
function claimOf(mode: string): string | undefined {
  return nodeClaim(mode) ?? restoreNodeClaim(mode) ?? deleteNodeClaim(mode);
}

function stepOfCommand(mode: string): NodeStep | undefined {
  return (Object.keys(NodeStepModes) as NodeStep[]).find((s) => NodeStepModes[s].command === mode);
}
function stepOfWorking(mode: string): NodeStep | undefined {
  return (Object.keys(NodeStepModes) as NodeStep[]).find((s) => NodeStepModes[s].working === mode);
}

/**
 * The node daemon: claims the commands on leaves of this node's VMs and runs
 * them. The feed only says which leaf to look at; the daemon re-reads the
 * leaf and decides from its mode (reconcile). The claim is a compare-and-swap
 * of the mode, so a leaf seen twice, or by two daemons, runs once.
 */
export class NodeDaemon {
  private readonly queue: KeyedWorkQueue;
  private readonly log: Logger;
  private readonly lock: NodeLock;
  /** the mode a leaf's latest change event carried: a command is claimed on it before anything is read */
  private readonly modeHints = new Map<string, string>();

  constructor(private readonly o: NodeDaemonOptions) {
    this.log = o.logger.child({ node: o.nodeName });
    this.lock = new NodeLock(o.runDir ?? '/run/stoney-backup', o.nodeName);
    this.queue = new KeyedWorkQueue((dn) => this.reconcileLeaf(dn), o.concurrency ?? 4, (dn, err) =>
      this.log.error({ leafDn: dn, err: errorMessage(err) }, 'reconcile failed'),
    );
  }

  async start(): Promise<void> {
    await this.lock.acquire();
    try {
      await this.recoverInterruptedSteps();
    } catch (err) {
      await this.lock.release();
      throw err;
    }
    await this.o.feed.start((e) => this.onChange(e));
    this.log.info({ imageRoots: this.o.imageRoots, allowedRoots: this.o.allowedRoots }, 'node daemon started');
  }

  async stop(): Promise<void> {
    await this.o.feed.stop();
    await this.queue.stop();
    await this.lock.release();
    this.log.info('node daemon stopped');
  }

  /** Resolves when no leaf is being worked on or waiting. */
  idle(): Promise<void> {
    return this.queue.idle();
  }

  private onChange(e: ChangeEvent): void {
    if (e.kind === 'leaf') {
      const mode = e.attributes?.['sstprovisioningmode']?.[0];
      if (mode !== undefined && !e.deleted) this.modeHints.set(e.dn, mode);
      this.queue.add(e.dn, vmOfLeafDn(e.dn));
    }
    else if (e.kind === 'resync' || e.kind === 'vm') void this.resync().catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'resync failed'));
  }

  /** Queue every leaf of this node's VMs that has a command waiting. */
  async resync(): Promise<void> {
    const vms = await this.o.directory.listVms({ node: this.o.nodeName });
    const leaves = await this.o.directory.listLeavesOfVms(vms.map((v) => v.name));
    for (const l of leaves) if (claimOf(l.mode) !== undefined || !isLeafMode(l.mode) || l.mode === 'finished') this.queue.add(l.dn, l.vm);
  }

  /** Leaves left in a working mode by a daemon that died: recover them first. */
  private async recoverInterruptedSteps(): Promise<void> {
    const vms = await this.o.directory.listVms({ node: this.o.nodeName });
    const leaves = await this.o.directory.listLeavesOfVms(vms.map((v) => v.name));
    for (const leaf of leaves) {
      const step = stepOfWorking(leaf.mode);
      const vm = vms.find((v) => v.name === leaf.vm);
      if (!step || !vm) continue;
      const log = this.log.child({ vm: vm.name, leaf: leaf.leaf, step });
      log.warn({ mode: leaf.mode }, 'found a step interrupted by a restart; recovering');
      // A delete only removes files of the backup: running it again finishes it.
      const recover = step === 'delete' ? deleteStep : (ctx: StepContext) => recoverInterruptedStep(ctx, leaf.mode);
      await this.finishStep(leaf, step, vm, recover, log);
    }
  }

  private async reconcileLeaf(dn: string): Promise<void> {
    const hinted = this.modeHints.get(dn);
    this.modeHints.delete(dn);
    if (hinted !== undefined && (await this.claimFirst(dn, hinted))) return;
    const leaf = await this.o.directory.getLeaf(dn);
    if (!leaf) return;
    if (!isSafeName(leaf.vm)) {
      // Never let such a name reach a path or a command; say so on the leaf once.
      if (leaf.returnValue !== ReturnCode.unsafeName && isLeafMode(leaf.mode) && claimOf(leaf.mode) !== undefined) {
        this.log.error({ vm: leaf.vm, leafDn: dn }, 'VM name is not a safe path component; leaf refused');
        await this.o.directory.casMode(dn, leaf.mode, leaf.mode, { returnValue: ReturnCode.unsafeName, state: protocolTimestamp() });
      }
      return;
    }
    const vm = await this.o.directory.getVm(leaf.vm);
    if (!vm || vm.node !== this.o.nodeName) return;
    const log = this.log.child({ vm: vm.name, leaf: leaf.leaf });
    if (!isLeafMode(leaf.mode)) {
      if (leaf.returnValue !== ReturnCode.unknownMode) {
        log.error({ mode: leaf.mode }, 'leaf has an unknown sstProvisioningMode; leaving it alone');
        await this.o.directory.casMode(dn, leaf.mode, leaf.mode, { returnValue: ReturnCode.unknownMode, state: protocolTimestamp() });
      }
      return;
    }
    if (leaf.mode === 'finished') {
      await this.cleanUpEndedRestore(leaf, vm, log);
      return;
    }
    const step = stepOfCommand(leaf.mode);
    if (!step || claimOf(leaf.mode) === undefined) return;
    const working = NodeStepModes[step].working;
    if (!(await this.o.directory.casMode(dn, leaf.mode, working))) {
      log.debug({ mode: leaf.mode }, 'lost the claim; another process owns the step');
      return;
    }
    await this.finishStep({ ...leaf, mode: working }, step, vm, steps[step], log.child({ step }));
  }

  /**
   * Claim a command on the mode its change event carried, before reading
   * anything (the feed sends a node only leaves of VMs it places on that
   * node), then read what the step needs. If the VM turns out not to be this
   * node's after all (moved a moment ago), the claim is handed back. Returns
   * false when there was nothing to claim this way (the caller then reads
   * the leaf and decides as usual).
   */
  private async claimFirst(dn: string, mode: string): Promise<boolean> {
    const name = vmOfLeafDn(dn);
    const step = isLeafMode(mode) ? stepOfCommand(mode) : undefined;
    if (!step || claimOf(mode) === undefined || name === undefined || !isSafeName(name)) return false;
    const working = NodeStepModes[step].working;
    if (!(await this.o.directory.casMode(dn, mode, working))) return false; // changed since: read and decide
    const [leaf, vm] = await Promise.all([this.o.directory.getLeaf(dn), this.o.directory.getVm(name)]);
    if (!leaf || !vm || vm.node !== this.o.nodeName) {
      this.log.warn({ leafDn: dn, vm: name, node: vm?.node }, 'claimed a command of a VM that is not on this node (moved?); handing it back');
      await this.o.directory.casMode(dn, working, mode);
      return true;
    }
    const log = this.log.child({ vm: vm.name, leaf: leaf.leaf });
    await this.finishStep({ ...leaf, mode: working }, step, vm, steps[step], log.child({ step }));
    return true;
  }

  /** Run a claimed step and report its end: done mode, time, return value. */
  private async finishStep(leaf: LeafEntry, step: NodeStep, vm: VmEntry, run: (ctx: StepContext) => Promise<StepResult>, log: Logger): Promise<void> {
    const t0 = performance.now();
    let returnValue: number = ReturnCode.success;
    let executionTime: Record<string, number> = {};
    const progress = meterProgress(step, this.o.onProgress, this.o.metrics);
    const heartbeat = new StepHeartbeat(this.o.directory, leaf.dn, leaf.mode, this.o.heartbeatMs ?? 60_000, log).start();
    try {
      const ctx = await this.context(vm, leaf, log, (p) => {
        heartbeat.noteProgress();
        progress.onProgress(p);
      });
      ({ executionTime } = await run(ctx));
    } catch (err) {
      returnValue = errorCode(err);
      log.error({ code: returnValue, err: errorMessage(err), retryable: err instanceof BackupError && err.retryable }, `${step} failed`);
    } finally {
      progress.end();
      await heartbeat.stop();
    }
    this.o.metrics?.stepEnded(step, returnValue === ReturnCode.success, (performance.now() - t0) / 1000, executionTime);
    const done = NodeStepModes[step].done;
    // sstProvisioningExecutionTime describes the backup (snapshot, downtime, merge,
    // retain); a restore's timings go to the log only, so an aborted restore leaves no trace.
    const isBackupStep = step === 'snapshot' || step === 'merge' || step === 'retain';
    // Killed with the step done on the host but not reported: recovery must judge the world.
    faultPoint(`before-report:${step}`);
    const reported = await this.report(leaf.dn, NodeStepModes[step].working, done, {
      state: protocolTimestamp(),
      returnValue,
      ...(isBackupStep ? { executionTime } : {}),
    }, log);
    log.info({ mode: done, returnValue, durationMs: Math.round(performance.now() - t0), executionTime, reported }, `${step} reported`);
    // A driver killed between two steps (kvmbackup runs this daemon in its own process).
    faultPoint(`after-report:${step}`);
  }

  /**
   * The step is done on the host; its report must reach the directory even
   * through a short outage, or the leaf would sit in its working mode until
   * the control side's timeout. Retried with backoff for about five minutes.
   */
  private async report(dn: string, working: string, done: string, extras: ModeChangeExtras, log: Logger): Promise<boolean> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.o.directory.casMode(dn, working, done, extras);
      } catch (err) {
        if (attempt >= 12) throw err;
        const waitMs = Math.min(30_000, 500 * 2 ** attempt);
        log.warn({ err: errorMessage(err), attempt, waitMs }, 'cannot report the step yet; retrying');
        await new Promise((r) => setTimeout(r, waitMs));
      }
    }
  }

  /**
   * A restore that ended (restored → finished) or was aborted (back to
   * finished, as the web UI's cancel does) leaves its request below the leaf
   * and maybe its work directory, the leaf's retain directory: remove both,
   * the directory only if this program made it and only the files a restore
   * makes (restoreWorkDir.ts; a failed rollback's files stay). A request
   * without `retain` was just written by the control side and is not touched.
   */
  private async cleanUpEndedRestore(leaf: LeafEntry, vm: VmEntry, log: Logger): Promise<void> {
    const request = await this.o.directory.getRestoreRequest(leaf.dn);
    if (!request?.retain) return;
    const ctx = await this.context(vm, leaf, log);
    const retainRoot = ctx.settings.retainDirectory;
    const left = await removeRestoreWorkDir(ctx.layout, retainRoot, { keepRollback: true, logger: log });
    if (request.retain !== leaf.leaf && isLeafName(request.retain)) {
      // Earlier versions worked in a restore-timestamp directory beside the leaf's (marked by conflicts.json).
      const earlier = path.join(path.dirname(ctx.layout.retainDir), request.retain);
      await assertNoSymlinkBelow(retainRoot, earlier, 'any');
      if (await exists(path.join(earlier, 'conflicts.json'))) await rm(earlier, { recursive: true, force: true });
    }
    await this.o.directory.deleteRestoreRequest(leaf.dn);
    log.info({ retainDir: ctx.layout.retainDir, left }, 'restore ended; its request and work directory are removed');
  }

  private async context(vm: VmEntry, leafEntry: LeafEntry, logger: Logger, onProgress?: (p: StepProgress) => void): Promise<StepContext> {
    const leaf = leafEntry.leaf;
    const settings = (await this.o.directory.effectiveSettings(vm)).backup;
    // Before any step (or restore clean-up) touches a file: the directory may name any path.
    assertAllowedDirectories(settings, this.o.allowedRoots);
    // <vm-type>/<storage-pool> of the VM's first disk, as the original; a
    // leaf written by an earlier version under the VM-pool path is found there.
    const { layout, legacy } = await locateLayout(vm, leaf, settings, this.o.imageRoots);
    if (legacy) logger.info({ backupDir: layout.backupDir }, 'backup found under the VM-pool path of an earlier version');
    return {
      vm, leaf, settings, layout, logger,
      leafDn: leafEntry.dn,
      directory: this.o.directory,
      virsh: this.o.virsh,
      qemuImg: this.o.qemuImg,
      imageRoots: this.o.imageRoots,
      ...(onProgress ? { onProgress } : {}),
    };
  }
}

/** ou=<leaf>,ou=backup,sstVirtualMachine=<vm>,… → the VM's name (the queue's group). */
export function vmOfLeafDn(dn: string): string {
  const m = /,\s*ou=backup\s*,\s*sstVirtualMachine=([^,]+)/i.exec(dn);
  return m?.[1] ?? dn;
}
