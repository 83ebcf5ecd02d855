import type { Logger } from 'pino';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { CommandError, run, startCollecting, type CollectingProcess } from './exec.js';
import { parseDomainName, parseDomState, type DomainRunState } from './domainXml.js';
import { fileReadPosition } from './fileReadPosition.js';
import { readFile } from 'node:fs/promises';
import { parseDomainCapabilities, type DomainCapabilities } from './domainCapabilities.js';
import { judgeProgress, STALL_MS, stalledMessage, type JobSample, type ProgressJudge, type ProgressWatch } from './jobProgress.js';

/** No wall-clock limit for a job that progresses: the command waits as long as this at most (a guard, not a timeout). */
const LONG_JOB_MS = 48 * 3600 * 1000;
const FIRST_LOOK_MS = 100;

/** What watchedCommand looks at and does for one kind of job. */
interface WatchedJob {
  /** one look at the job; `returned`: virsh has returned */
  sample(returned: boolean): Promise<JobSample>;
  abort(): Promise<void>;
  /** said after the stall message once aborted */
  aborted: string;
  code: number;
}

/** How a long job in libvirtd (save, live snapshot, restore) is watched; tests shorten it or inject a stall. */
export interface JobWatchOptions {
  stallMs?: number;
  pollMs?: number;
  judge?: ProgressJudge;
  /** hears every look at the job (crash tests kill the process at one that shows it running) */
  onSample?: (sample: JobSample) => void;
}

/**
 * libvirt through virsh. Only libvirt's own APIs are used (save, restore,
 * blockpull…), never raw monitor commands for block jobs: libvirt would not
 * track them (see reference/libvirt-and-qemu.md).
 */
export class Virsh {
  constructor(
    readonly uri: string = 'qemu:///system',
    private readonly logger?: Logger,
    private readonly timeoutMs: number = 30 * 60 * 1000,
  ) {}

  private async virsh(args: string[], timeoutMs?: number, opts: { withStderr?: boolean } = {}): Promise<string> {
    try {
      const r = await run('virsh', ['-q', '-c', this.uri, ...args], { timeoutMs: timeoutMs ?? this.timeoutMs, logger: this.logger });
      return opts.withStderr ? `${r.stdout}\n${r.stderr}` : r.stdout;
    } catch (err) {
      if (err instanceof CommandError && /failed to get domain|Domain not found|no domain with matching name/i.test(err.stderr)) {
        throw new BackupError(`libvirt does not know the VM: ${err.stderr.trim()}`, ReturnCode.cannotFindMachine, { cause: err });
      }
      throw err;
    }
  }

  async domainExists(vm: string): Promise<boolean> {
    try {
      await this.virsh(['domuuid', vm], 30_000);
      return true;
    } catch (err) {
      if (err instanceof BackupError && err.code === ReturnCode.cannotFindMachine) return false;
      throw err;
    }
  }

  async domState(vm: string): Promise<DomainRunState> {
    return parseDomState(await this.virsh(['domstate', vm], 30_000));
  }

  async isPersistent(vm: string): Promise<boolean> {
    const out = await this.virsh(['dominfo', vm], 30_000);
    return /^Persistent:\s+yes/m.test(out);
  }

  async dumpXml(vm: string, opts: { inactive?: boolean } = {}): Promise<string> {
    return this.virsh(['dumpxml', ...(opts.inactive ? ['--inactive'] : []), vm], 60_000);
  }

  /**
   * Stops the VM and writes its memory and CPU state to `file`, for as long
   * as the dump makes progress (watchedDomainJob).
   */
  async save(vm: string, file: string, watch: JobWatchOptions = {}): Promise<void> {
    await this.watchedDomainJob(vm, ['save', vm, file], `virsh save of ${vm}`, watch);
  }

  /** A virsh command whose work is a job of the domain in libvirtd (save, live snapshot), watched by that job. */
  private async watchedDomainJob(vm: string, args: string[], what: string, o: JobWatchOptions): Promise<void> {
    await this.watchedCommand(args, what, o, {
      // Over only when libvirt runs no job any more (virsh may fail or be cut off while libvirtd still writes).
      sample: () => this.domainJob(vm),
      abort: () => this.abortDomainJob(vm),
      aborted: 'aborted, libvirt runs no job on the domain any more',
      code: ReturnCode.cannotSaveMachineState,
    });
  }

  /** The domain XML embedded in a state file. */
  async saveImageXml(file: string): Promise<string> {
    return this.virsh(['save-image-dumpxml', file], 60_000);
  }

  /**
   * Starts the VM from a state file, for as long as the file is read on
   * (watchedCommand; libvirt reports no job for a restore, so the progress is
   * how far libvirtd and QEMU have read the file). A restore that reads
   * nothing for the stall limit is ended by destroying the domain being
   * restored and fails with 21; the state file is left as it was.
   */
  async restore(file: string, xmlFile?: string, watch: JobWatchOptions = {}): Promise<void> {
    await this.watchedCommand(['restore', file, ...(xmlFile ? ['--xml', xmlFile] : [])], `virsh restore of ${file}`, watch, {
      sample: async (returned) => (returned ? { active: false } : { active: true, progress: await fileReadPosition(file) }),
      abort: async () => {
        const xml = xmlFile ? await readFile(xmlFile, 'utf8') : await this.saveImageXml(file);
        const name = parseDomainName(xml);
        if (name === undefined) throw new Error(`no domain name in the XML of ${file}`);
        await this.virsh(['destroy', name], 120_000);
      },
      aborted: 'the domain being restored was destroyed',
      code: ReturnCode.cannotRestoreMachine,
    });
  }

  async start(vm: string, opts: { paused?: boolean } = {}): Promise<void> {
    await this.virsh(['start', vm, ...(opts.paused ? ['--paused'] : [])], 120_000);
  }

  async resume(vm: string): Promise<void> {
    await this.virsh(['resume', vm], 60_000);
  }

  /** `virsh domstate --reason`: e.g. "running (restored)" vs "running (booted)". */
  async domStateReason(vm: string): Promise<string> {
    return (await this.virsh(['domstate', '--reason', vm], 30_000)).trim();
  }

  async destroy(vm: string): Promise<void> {
    await this.virsh(['destroy', vm], 120_000);
  }

  async define(xmlFile: string): Promise<void> {
    await this.virsh(['define', xmlFile], 60_000);
  }

  /**
   * Removes the persistent definition. Checkpoint metadata goes with it
   * (libvirt refuses otherwise): a restore replaces the disks, so the
   * bitmaps the checkpoints stand for are gone anyway.
   */
  async undefine(vm: string): Promise<void> {
    await this.virsh(['undefine', '--checkpoints-metadata', vm], 60_000);
  }

  /**
   * A libvirt checkpoint: a persistent dirty bitmap named like it in the
   * current top image of each disk with `bitmap: true`, recording every
   * write from now on — libvirt carries it into overlays of later snapshots
   * and merges it back on commit, so it survives the live method's merge.
   */
  async checkpointCreate(vm: string, name: string, disks: { target: string; bitmap: boolean }[]): Promise<void> {
    const esc = (v: string) => v.replaceAll(',', ',,');
    const args = ['checkpoint-create-as', vm, '--name', name];
    for (const d of disks) args.push('--diskspec', d.bitmap ? `${esc(d.target)},checkpoint=bitmap,bitmap=${esc(name)}` : `${esc(d.target)},checkpoint=no`);
    await this.virsh(args, 120_000);
  }

  /** The domain's checkpoints, parents before children. */
  async checkpointNames(vm: string): Promise<string[]> {
    const out = await this.virsh(['checkpoint-list', vm, '--name', '--topological'], 30_000);
    return out.split('\n').map((l) => l.trim()).filter(Boolean);
  }

  /**
   * Deletes a checkpoint and its bitmaps (merged into its parent's, if it has
   * one); `metadataOnly`: only libvirt's record, for a checkpoint whose
   * bitmaps are gone with the images that held them.
   */
  async checkpointDelete(vm: string, name: string, opts: { metadataOnly?: boolean } = {}): Promise<void> {
    await this.virsh(['checkpoint-delete', vm, name, ...(opts.metadataOnly ? ['--metadata'] : [])], 120_000);
  }

  /**
   * Start pulling the backing data into the live top image with libvirt's
   * block job API (the caller waits for the job: waitForBlockJob). bandwidth in MiB/s, 0 = unlimited; with `base`, only
   * the images above it are pulled (a template below stays shared).
   */
  async blockPull(vm: string, target: string, bandwidthMiB: number, base?: string): Promise<void> {
    // No --wait: the job runs inside libvirtd for as long as the disk takes; the caller watches its progress.
    const args = ['blockpull', vm, target];
    if (base !== undefined) args.push('--base', base);
    if (bandwidthMiB > 0) args.push('--bandwidth', String(bandwidthMiB));
    await this.virsh(args);
  }

  /**
   * External snapshot of a running VM with its memory, taken while the guest
   * runs (`--live`): QEMU writes RAM into `stateFile` and pauses the guest only
   * for the final instant, then every disk in `overlays` continues on a new
   * qcow2 overlay at the given path; the images below stay frozen as of that
   * instant. `--atomic`: either all disks switch or none. No libvirt snapshot
   * metadata is kept (the directory is the record). Other disks are left out.
   */
  async snapshotLive(vm: string, stateFile: string, overlays: { target: string; file: string }[], otherTargets: string[], watch: JobWatchOptions = {}): Promise<void> {
    const esc = (v: string) => v.replaceAll(',', ',,');
    // --reuse-external: the overlays exist already (made before, outside the
    // pause); libvirt creating them would happen while the guest is paused.
    const args = ['snapshot-create-as', vm, '--no-metadata', '--live', '--atomic', '--reuse-external', '--memspec', `file=${esc(stateFile)},snapshot=external`];
    for (const o of overlays) args.push('--diskspec', `${esc(o.target)},snapshot=external,driver=qcow2,file=${esc(o.file)}`);
    for (const t of otherTargets) args.push('--diskspec', `${esc(t)},snapshot=no`);
    await this.watchedDomainJob(vm, args, `the live snapshot of ${vm}`, watch);
  }

  /**
   * Start folding the active overlay of `target` into its backing image
   * (`blockcommit --active`): QEMU writes only what the overlay holds. The
   * caller waits until the job is ready and pivots the guest onto the image
   * (waitForBlockJob). bandwidth in MiB/s, 0 = unlimited.
   */
  async blockCommitActive(vm: string, target: string, bandwidthMiB: number): Promise<void> {
    // No --wait/--pivot: the caller watches the job and pivots once it is ready.
    const args = ['blockcommit', vm, target, '--active'];
    if (bandwidthMiB > 0) args.push('--bandwidth', String(bandwidthMiB));
    await this.virsh(args);
  }

  /** The block job running on a disk, if any (e.g. one our dead process started). */
  async blockJob(vm: string, target: string): Promise<BlockJobInfo | undefined> {
    // virsh prints a job's progress on stderr.
    return parseBlockJobInfo(await this.virsh(['blockjob', vm, target, '--info'], 30_000, { withStderr: true }));
  }

  /** Finish a ready active commit or copy by switching onto its target. */
  async blockJobPivot(vm: string, target: string): Promise<void> {
    await this.virsh(['blockjob', vm, target, '--pivot'], 120_000);
  }

  /** QEMU's migration downtime limit (ms), which also bounds a live snapshot's final pause. */
  async maxDowntimeMs(vm: string): Promise<number> {
    return Number((await this.virsh(['migrate-getmaxdowntime', vm], 30_000)).trim());
  }

  async setMaxDowntimeMs(vm: string, ms: number): Promise<void> {
    await this.virsh(['migrate-setmaxdowntime', vm, String(Math.round(ms))], 30_000);
  }

  /** Whether libvirt runs a job on the domain (save, snapshot, migration…). */
  async domainJobActive(vm: string): Promise<boolean> {
    return (await this.domainJob(vm)).active;
  }

  /** libvirt's job on the domain: whether one runs, and the bytes it has processed. */
  async domainJob(vm: string): Promise<JobSample> {
    try {
      return parseDomainJobStats(await this.virsh(['domjobinfo', vm, '--rawstats'], 30_000));
    } catch (err) {
      // A domain that is not running runs no job (and libvirt refuses to say so);
      // a transient one is gone once saved.
      if (err instanceof CommandError && /domain is not running/i.test(err.stderr)) return { active: false };
      if (err instanceof BackupError && err.code === ReturnCode.cannotFindMachine) return { active: false };
      throw err;
    }
  }

  /** Ask libvirt to abort the domain's job (the save or snapshot then fails; libvirt ends it). */
  async abortDomainJob(vm: string): Promise<void> {
    await this.virsh(['domjobabort', vm], 120_000);
  }

  /**
   * Run a virsh command whose work happens inside libvirtd (and QEMU),
   * watching its progress meanwhile instead of a fixed timeout: a dump or a
   * restore of many GiB takes as long as it takes. When it makes no progress
   * for `stallMs`, the work is aborted and the command fails — but only once
   * the job is over (`sample` says inactive): the caller may then remove the
   * file the job wrote, which libvirtd would otherwise still be writing.
   */
  private async watchedCommand(args: string[], what: string, o: JobWatchOptions, job: WatchedJob): Promise<void> {
    const stallMs = o.stallMs ?? STALL_MS;
    const pollMs = o.pollMs ?? 1000;
    const judge = o.judge ?? judgeProgress;
    const command = this.virsh(args, LONG_JOB_MS).then(() => undefined, (err: unknown) => ({ err }));
    const settled = command.then(() => true);
    const pause = (ms: number) => new Promise<boolean>((r) => setTimeout(() => r(false), ms));
    let watch: ProgressWatch | undefined;
    let aborted: string | undefined;
    // The first look comes early: a job shorter than one poll interval is still seen running once.
    let wait = Math.min(pollMs, FIRST_LOOK_MS);
    for (;;) {
      const done = await Promise.race([settled, pause(wait)]);
      wait = pollMs;
      // virsh returns success once libvirt's job has completed: no further look
      // (for a save, it would lengthen the VM's stopped window).
      if (done && aborted === undefined && (await command) === undefined) return;
      const sample = await job.sample(done).catch((err: unknown) => {
        this.logger?.warn({ what, err: String(err) }, 'cannot read the job\'s progress; watching on');
        return undefined;
      });
      if (done && sample?.active !== true) break;
      if (done) await pause(pollMs);
      if (sample === undefined) continue;
      o.onSample?.(sample);
      const r = judge(watch, sample, Date.now(), stallMs);
      watch = r.watch;
      if (r.verdict === 'stalled' && aborted === undefined) {
        aborted = stalledMessage(what, stallMs, sample.progress);
        this.logger?.error({ what, progress: sample.progress }, `${aborted}; aborting it`);
        await job.abort().catch((err: unknown) => this.logger?.error({ what, err: String(err) }, 'cannot abort; waiting for the job to end'));
      }
    }
    const outcome = await command;
    if (aborted !== undefined) throw new BackupError(`${aborted}; ${job.aborted}`, job.code, { cause: outcome?.err });
    if (outcome !== undefined) throw outcome.err;
  }

  /**
   * Start collecting the VM's lifecycle events (for the stopped window); the
   * watcher ends after `timeoutMs` at the latest. Resolves once virsh had a
   * moment to register for the events.
   */
  async watchLifecycle(vm: string, timeoutMs: number): Promise<CollectingProcess> {
    const p = startCollecting('virsh', ['-q', '-c', this.uri, 'event', '--domain', vm, '--loop', '--timestamp', '--event', 'lifecycle'], { timeoutMs, logger: this.logger });
    await new Promise((r) => setTimeout(r, 150));
    return p;
  }

  /** The node's emulator and firmware for a virt type (kvm, qemu) and arch: what a restored definition is pinned to. */
  async domainCapabilities(virtType: string, arch: string): Promise<DomainCapabilities> {
    return parseDomainCapabilities(await this.virsh(['domcapabilities', '--virttype', virtType, '--arch', arch], 60_000));
  }

  /** `virsh qemu-monitor-command --hmp`: used only by tests to act as the guest. */
  async hmp(vm: string, command: string): Promise<string> {
    return this.virsh(['qemu-monitor-command', vm, '--hmp', command], 60_000);
  }
}

export interface BlockJobInfo {
  /** e.g. "Active Block Commit", "Block Pull" */
  type: string;
  percent: number;
}

/**
 * `virsh domjobinfo --rawstats`: "Job type: <n>" (libvirt's virDomainJobType)
 * and `data_processed: <bytes>`. Only 0 (none) means libvirt runs no job:
 * domjobinfo shows the job libvirt still holds, and 3 (completed), 4 (failed)
 * or 5 (cancelled) are a job still finishing — seen here for 1.4 s of a 2.2 s
 * `virsh save`, with the VM "paused (saving)" and the state file not yet
 * complete. Once the job is over libvirt shows none.
 */
export function parseDomainJobStats(stdout: string): JobSample {
  const type = /^Job type:\s*(\S+)/m.exec(stdout)?.[1];
  const active = type !== undefined && type !== '0' && type !== 'None';
  const processed = /^data_processed:\s*(\d+)/m.exec(stdout)?.[1];
  return active ? { active, ...(processed !== undefined ? { progress: Number(processed) } : {}) } : { active: false };
}

/** `virsh blockjob --info` (stdout and stderr): "No current block job for vda" or "Active Block Commit: [ 45 %]". */
export function parseBlockJobInfo(stdout: string): BlockJobInfo | undefined {
  const m = /^\s*([A-Za-z ]+?):\s*\[\s*([\d.]+)\s*%\]/m.exec(stdout);
  if (!m) return undefined;
  return { type: m[1] as string, percent: Number(m[2]) };
}
