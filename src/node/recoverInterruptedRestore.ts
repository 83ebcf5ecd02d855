import { readFile, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { parseLdif } from '../domain/restore/ldifRecords.js';
import type { BackupLayout } from '../domain/layout.js';
import { parseDomainDisks } from '../hypervisor/domainXml.js';
import { exists } from './durableFs.js';
import { DECIDED_STARTING } from './restoreWorkDir.js';
import { isPlaceholderState, loadRestoreWork, type RestoreWork } from './restoreWork.js';
import { finishRestore, retainedImagesByTarget, rollBack, startDecidedVm } from './restoreStep.js';
import { seconds, type StepContext, type StepResult } from './StepContext.js';
import { BUSY_DOMAIN_LIMIT_MS, privateStateFiles, untilAnswered, waitForDomainJob } from './libvirtLeftovers.js';

/**
 * A daemon died in `restoring`. From the work directory and libvirt, work
 * out how far it came.
 *
 * Before the decided VM was defined everything can still be undone, as a
 * failing restore would: the images it had moved go back to the work
 * directory, the live images moved aside go back in place, the live
 * definition is defined again and the VM resumed from the state the restore
 * saved it in (a restore as a new VM: the copy's images go, nothing of it is
 * left). The step fails with 50.
 *
 * After the define (every image in place, the decided domain defined) the
 * restore is completed forward by completeInterruptedRestore, from the work
 * directory's own files, and the step succeeds.
 */
export async function recoverInterruptedRestore(ctx: StepContext): Promise<StepResult> {
  const { vm, virsh, logger } = ctx;
  const w = await loadRestoreWork(ctx);
  const { work, asNew, target } = w;
  const decidedXmlFile = work.retainPath('decided.xml');
  if (!(await exists(decidedXmlFile))) {
    throw new BackupError('the restore was interrupted by a daemon restart before it touched the live VM', ReturnCode.interruptedByRestart);
  }
  // A save of the VM, or the restore of the decided one, our dead process asked for may still run in libvirtd.
  if (await untilAnswered(ctx, `whether ${target} exists`, () => virsh.domainExists(target))) await waitForDomainJob(ctx, target);
  const decidedXml = await readFile(decidedXmlFile, 'utf8');
  const backupXml = await readFile(w.unretained(work.xmlFileName), 'utf8');
  const retainedByTarget = retainedImagesByTarget(backupXml, w);
  const moves = parseDomainDisks(decidedXml).flatMap((d) => {
    const from = d.device === 'disk' && d.type === 'file' && d.source ? retainedByTarget.get(d.target) : undefined;
    return from ? [{ from, to: d.source as string }] : [];
  });
  const placed: { from: string; to: string }[] = [];
  for (const m of moves) if (!(await exists(m.from)) && (await exists(m.to))) placed.push(m);
  const liveXmlFile = work.retainPath('live.xml');
  const liveSources = (await exists(liveXmlFile)) ? parseDomainDisks(await readFile(liveXmlFile, 'utf8')).flatMap((d) => (d.source ? [d.source] : [])) : [];
  const asides: { dest: string; aside: string }[] = [];
  for (const dest of liveSources) {
    const aside = work.retainPath(`live-${path.basename(dest)}`);
    if (await exists(aside)) asides.push({ dest, aside });
  }
  // Images are moved only after the live VM was undefined (a copy's: before the copy is
  // defined): a defined domain of the target's name with images moved is the decided one —
  // which completeInterruptedRestore checks before it acts.
  const defined = await untilAnswered(ctx, `whether ${target} exists`, () => virsh.domainExists(target));
  if (defined && moves.length === 0 && !asNew) {
    // No image to tell by: the domain may be the live VM (saved, not yet undefined) or the decided one.
    throw new BackupError(
      `the restore was interrupted by a daemon restart and ${target} has no file disk to tell whether it is the live VM or the restored one: recovery changed nothing; check it by hand with ${work.retainDir} — if the restore had saved the live VM, its memory is in live.state there (docs/restore-runbook.md)`,
      ReturnCode.interruptedByRestart,
    );
  }
  if (defined && (placed.length > 0 || asNew)) {
    return completeInterruptedRestore(ctx, w, { decidedXml, moves, placed, asides, liveXmlFile });
  }
  if (asNew) {
    logger.warn({ vm: vm.name, leaf: ctx.leaf, target, placed: placed.length }, 'recovery: rolling back a restore as a new VM a daemon restart interrupted');
    await rollBack(ctx, { placed, asides: [], undefinedLive: false, liveXmlFile, liveStateFile: undefined, wasRunning: false, asNew, target });
    throw new BackupError(`the restore as ${target} was interrupted by a daemon restart before the copy was defined; rolled back: nothing of the copy is left`, ReturnCode.interruptedByRestart);
  }
  // The live state — renamed into place, or still in the private directory it was written in — is
  // resumed unless the VM still runs (the restore died before its save completed).
  const liveStateFile = !defined || (await untilAnswered(ctx, `the state of ${vm.name}`, () => virsh.domState(vm.name))) === 'shut off' ? await savedLiveState(work) : undefined;
  logger.warn({ vm: vm.name, leaf: ctx.leaf, defined, placed: placed.length, asides: asides.length, liveState: liveStateFile ?? null }, 'recovery: rolling back a restore a daemon restart interrupted');
  await rollBack(ctx, { placed, asides, undefinedLive: !defined, liveXmlFile, liveStateFile, wasRunning: liveStateFile !== undefined, asNew: false, target: vm.name });
  if (liveStateFile && path.dirname(liveStateFile) !== work.retainDir) await rmdir(path.dirname(liveStateFile)).catch(() => undefined);
  throw new BackupError(`the restore was interrupted by a daemon restart before the decided VM was defined; rolled back: ${vm.name} is back on its previous images and definition`, ReturnCode.interruptedByRestart);
}

/** The state the restore saved the live VM in: renamed to live.state, or still in the private directory `virsh save` wrote it in. */
async function savedLiveState(work: BackupLayout): Promise<string | undefined> {
  for (const f of [work.retainPath('live.state'), ...(await privateStateFiles(work.retainDir, 'live.state'))]) {
    if (await exists(f)) return f;
  }
  return undefined;
}

/** The file disks of a definition, sorted: what identifies the decided domain among others of its name. */
function fileDiskSources(xml: string): string[] {
  return parseDomainDisks(xml).flatMap((d) => (d.device === 'disk' && d.type === 'file' && d.source ? [d.source] : [])).sort();
}

/**
 * How long a domain may stay paused "starting up" (an incoming restore from a
 * state file the dead process asked for) before recovery gives it to a human.
 * libvirt reports no job progress for it, so this is a wall clock. (The
 * libvirt of the tests answers no domstate until such a restore is over:
 * untilAnswered asks again for as long.)
 */
const STARTING_UP_LIMIT_MS = BUSY_DOMAIN_LIMIT_MS;

/**
 * Complete a restore that died after `virsh define` of the decided VM, from
 * the work directory's files: decided.xml (the definition), decided.ldif (the
 * directory subtree), the unretained state file; the live VM's asides,
 * live.xml and live.state are the rollback data.
 *
 * The domain of the target's name must be the decided one — its disks are
 * decided.xml's, every image is in place — else nothing is touched (50, for a
 * human). Shut off and never started since the define ("shut off (unknown)"):
 * started as restoreStep would (startDecidedVm); shut off after a start that
 * failed: cold-booted; running (or paused by someone): left alone, and one
 * still starting up from the state file (the dead process's `virsh restore`
 * outlives it) waited for; stopped after it ran (the guest
 * shut down, someone destroyed it): left off, it ran on the restored images
 * already. Then the directory is written, and the work directory removed, by
 * restoreStep's own tail (finishRestore).
 *
 * If the decided VM cannot be started, the restore is rolled back instead,
 * as a failed restore before the define would be: the decided domain is
 * undefined and the rollback data put back. That is safe only while the
 * decided domain is off (no guest has the images open; it never ran on them,
 * so nothing a guest wrote is lost — the backup's data stays in the backup)
 * — the condition checked — and it gives back the VM the user had, running,
 * rather than a defined VM that does not start. The step still fails (50,
 * "rolled back"), as a rollback before the define does. A decided VM that
 * neither runs nor is off after the failed start is left for a human (50)
 * with the files named; a rollback that itself fails gives rollBack's 40,
 * naming the directory its files are in.
 */
async function completeInterruptedRestore(
  ctx: StepContext,
  w: RestoreWork,
  r: { decidedXml: string; moves: { from: string; to: string }[]; placed: { from: string; to: string }[]; asides: { dest: string; aside: string }[]; liveXmlFile: string },
): Promise<StepResult> {
  const { vm, virsh, logger } = ctx;
  const t0 = performance.now();
  const { work, target, asNew } = w;
  const rollbackFiles = [work.retainPath('decided.xml'), work.retainPath('decided.ldif'), w.unretained(work.stateFileName), ...(asNew ? [] : [r.liveXmlFile, work.retainPath('live.state')]), ...r.asides.map((a) => a.aside)];
  const human = (why: string): never => {
    logger.error({ vm: vm.name, leaf: ctx.leaf, target, files: rollbackFiles }, `recovery: ${why}; check the VM by hand (docs/restore-runbook.md)`);
    throw new BackupError(`the restore was interrupted by a daemon restart after ${target} was defined: ${why}; check the VM by hand with ${rollbackFiles.join(', ')} (docs/restore-runbook.md)`, ReturnCode.interruptedByRestart);
  };
  const definedSources = fileDiskSources(await untilAnswered(ctx, `the definition of ${target}`, () => virsh.dumpXml(target, { inactive: true })));
  const decidedSources = fileDiskSources(r.decidedXml);
  if (definedSources.join('\n') !== decidedSources.join('\n') || r.placed.length !== r.moves.length) {
    return human(`the domain ${target} is not the decided one (its disks ${definedSources.join(' ')}, decided.xml's ${decidedSources.join(' ')}; ${r.placed.length} of ${r.moves.length} images in place)`);
  }
  const stateReason = () => untilAnswered(ctx, `the state of ${target}`, () => virsh.domStateReason(target));
  let reason = await stateReason();
  for (const end = Date.now() + STARTING_UP_LIMIT_MS; /^paused \(starting up\)/.test(reason) && Date.now() < end; reason = await stateReason()) {
    await new Promise((res) => setTimeout(res, 500));
  }
  if (/^paused \(starting up\)/.test(reason)) return human(`it has been starting up (a restore from its state file) for ${STARTING_UP_LIMIT_MS / 60_000} minutes`);
  logger.warn({ vm: vm.name, leaf: ctx.leaf, target, asNew, state: reason }, 'recovery: completing a restore a daemon restart interrupted after the decided VM was defined');
  let started: 'restored' | 'booted' | 'off' | 'ran';
  if (/^shut off \((unknown|failed)\)/.test(reason)) {
    const stateFile = w.unretained(work.stateFileName);
    // Once a start was tried, a guest may have run on the restored images: libvirt
    // forgets why an inactive domain is off when it restarts (a host reboot says
    // "unknown" too). Then only a cold boot is safe, and no rollback.
    const startTried = await exists(work.retainPath(DECIDED_STARTING));
    try {
      started = await startDecidedVm(ctx, { workDir: work.retainDir, target, xml: r.decidedXml, stateFile, placeholder: await isPlaceholderState(stateFile), cold: startTried || reason.includes('failed') });
    } catch (err) {
      const now = await untilAnswered(ctx, `the state of ${target}`, () => virsh.domState(target));
      if (now === 'running') {
        // Started meanwhile by the dead process's own `virsh restore`, which outlived it: it is what we wanted.
        logger.warn({ vm: vm.name, target, err: errorMessage(err) }, 'recovery: the decided VM runs although our start failed; completing');
        started = 'ran';
      } else if (now !== 'shut off' || startTried) {
        return human(`starting it failed (${errorMessage(err)}) and it is ${now}${startTried ? '; a guest may have run on the restored images already, so they are not rolled back' : ''}`);
      } else {
        return rollBackUnstartable(ctx, w, r, err);
      }
    }
  } else if (/^(running|paused|blocked)/.test(reason)) {
    started = 'ran';
  } else if (/^shut off/.test(reason)) {
    logger.warn({ vm: vm.name, target, state: reason }, 'recovery: the decided VM ran and was stopped since; left off');
    started = 'ran';
  } else {
    return human(`it is ${reason}`);
  }
  await finishRestore(ctx, work, target, parseLdif(await readFile(work.retainPath('decided.ldif'), 'utf8')));
  const result = { executionTime: { restore: seconds(t0) } };
  logger.info({ vm: vm.name, leaf: ctx.leaf, target, asNew, started, ...result.executionTime }, 'recovery: restore completed');
  return result;
}

/**
 * The decided VM could not be started and is off: no guest has run on the
 * restored images, so the restore is undone as one that failed before the
 * define — the decided domain undefined, the rollback data put back.
 */
async function rollBackUnstartable(
  ctx: StepContext,
  w: RestoreWork,
  r: { placed: { from: string; to: string }[]; asides: { dest: string; aside: string }[]; liveXmlFile: string },
  err: unknown,
): Promise<never> {
  const { vm, virsh } = ctx;
  const { work, target, asNew } = w;
  await virsh.undefine(target);
  const liveStateFile = asNew ? undefined : await savedLiveState(work);
  await rollBack(ctx, { placed: r.placed, asides: r.asides, undefinedLive: !asNew && (await exists(r.liveXmlFile)), liveXmlFile: r.liveXmlFile, liveStateFile, wasRunning: liveStateFile !== undefined, asNew, target });
  throw new BackupError(`the restore was interrupted by a daemon restart after ${target} was defined, and starting it failed (${errorMessage(err)}); rolled back: ${asNew ? 'nothing of the copy is left' : `${vm.name} is back on its previous images and definition`}`, ReturnCode.interruptedByRestart, { cause: err });
}
