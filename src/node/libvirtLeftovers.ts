import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { exists } from './durableFs.js';
import { judgeProgress, STALL_MS, stalledMessage, type ProgressWatch } from '../hypervisor/jobProgress.js';
import { CommandError } from '../hypervisor/exec.js';
import type { StepContext } from './StepContext.js';

/**
 * How long recovery asks libvirt again about a domain that does not answer
 * in time: generous for a state file of many GiB read at the slowest disk's
 * speed.
 */
export const BUSY_DOMAIN_LIMIT_MS = 30 * 60 * 1000;

/**
 * What a daemon that died leaves in libvirt and on disk, for the recoveries:
 * a job (save, live snapshot, block commit) libvirtd still runs for it, and
 * state files it was writing in private directories.
 */

/**
 * Wait until libvirt runs no job on the VM: a save or snapshot our dead
 * process asked for may outlive it. Watched by the job's progress, not by a
 * wall clock (a save of many GiB takes as long as it takes); a job that has
 * not moved for `stallMs` fails the recovery, the VM left as libvirt has it.
 */
export async function waitForDomainJob(ctx: StepContext, domain = ctx.vm.name, stallMs = STALL_MS): Promise<void> {
  let watch: ProgressWatch | undefined;
  for (;;) {
    const job = await untilAnswered(ctx, `the job of ${domain}`, () => ctx.virsh.domainJob(domain));
    const r = judgeProgress(watch, job, Date.now(), stallMs);
    if (r.verdict === 'ended') return;
    if (watch === undefined) ctx.logger.warn({ vm: ctx.vm.name, domain, leaf: ctx.leaf }, 'recovery: libvirt still runs a job on the VM; waiting for it to end');
    watch = r.watch;
    if (r.verdict === 'stalled') {
      throw new BackupError(`recovery: ${stalledMessage('a libvirt job on the VM', stallMs, job.progress)}; the VM is left as libvirt has it`, ReturnCode.cannotLockMachine);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

/**
 * Ask libvirt again while the question times out. libvirtd answers nothing
 * about a domain it is restoring from a state file until that is over
 * (measured: `virsh domstate` waited out a whole restore), and a restore the
 * dead process asked for outlives it; for a state of many GiB that takes
 * longer than one virsh call may wait. Any other failure, or a timeout past
 * `limitMs`, is thrown.
 */
export async function untilAnswered<T>(ctx: Pick<StepContext, 'vm' | 'leaf' | 'logger'>, what: string, ask: () => Promise<T>, limitMs = BUSY_DOMAIN_LIMIT_MS): Promise<T> {
  const end = Date.now() + limitMs;
  for (;;) {
    try {
      return await ask();
    } catch (err) {
      if (!(err instanceof CommandError && err.timedOut) || Date.now() >= end) throw err;
      ctx.logger.warn({ vm: ctx.vm.name, leaf: ctx.leaf, what }, 'recovery: libvirt did not answer in time (busy with the domain); asking again');
    }
  }
}

/** State files a snapshot was writing in its private directories (`.stoney-state-*`) below `parent`. */
export async function privateStateFiles(parent: string, fileName: string): Promise<string[]> {
  const entries = await readdir(parent, { withFileTypes: true }).catch(() => []);
  const found: string[] = [];
  for (const e of entries) {
    if (!e.isDirectory() || !e.name.startsWith('.stoney-state-')) continue;
    const f = path.join(parent, e.name, fileName);
    if (await exists(f)) found.push(f);
  }
  return found;
}
