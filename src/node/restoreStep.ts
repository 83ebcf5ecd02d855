import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { formatLdif, parseLdif, type LdifEntry } from '../domain/restore/ldifRecords.js';
import type { BackupLayout } from '../domain/layout.js';
import { applyDecisions, randomMac, renameForRestoreAs, type RestoreInputs } from '../domain/restore/restoreConflicts.js';
import { applyDecisionFile } from '../domain/restore/decisionFile.js';
import { parseDomainDisks, stripBackingStores } from '../hypervisor/domainXml.js';
import { allowlistedDomainXml } from '../domain/restore/domainAllowlist.js';
import { assertSafeName } from '../domain/names.js';
import { chownByName } from '../hypervisor/ownership.js';
import { isBelow } from './backupDisks.js';
import { assertSafeImageHeader } from './imageHeaderCheck.js';
import { chmodNoFollow, createPrivateStateFile } from './safeFs.js';
import { exists, sameFilesystem, writeFileDurably } from './durableFs.js';
import { isPlaceholderState, loadRestoreWork, siblingVmDn, type RestoreWork } from './restoreWork.js';
import { DECIDED_STARTING, PRIVATE_DIR_PREFIX, removeRestoreWorkDir } from './restoreWorkDir.js';
import { readDecisionLdif } from './restoreDecisionLdif.js';
import { seconds, type StepContext, type StepResult } from './StepContext.js';
import { faultPoint, faultPointWhile } from './faultPoint.js';

/**
 * Undo the live part of a restore that failed before the decided VM was
 * defined: retained images back to retain, live images back in place, the
 * live definition back, and the VM resumed from the state saved when the
 * restore stopped it (exactly where it was, nothing the guest wrote or
 * cached lost); started cold only if there is no such state or it does not
 * restore.
 */
export async function rollBack(
  ctx: StepContext,
  r: { placed: { from: string; to: string }[]; asides: { dest: string; aside: string }[]; undefinedLive: boolean; liveXmlFile: string; liveStateFile: string | undefined; wasRunning: boolean; asNew: boolean; target: string },
): Promise<void> {
  const { virsh, logger, vm } = ctx;
  try {
    for (const m of [...r.placed].reverse()) await rename(m.to, m.from);
    for (const a of [...r.asides].reverse()) await rename(a.aside, a.dest);
    if (r.undefinedLive && (await exists(r.liveXmlFile))) {
      await virsh.define(r.liveXmlFile);
      let resumed = false;
      if (r.liveStateFile && (await exists(r.liveStateFile))) {
        // Its embedded XML names the live images, which are back at their paths.
        resumed = await virsh.restore(r.liveStateFile).then(
          () => true,
          (err: unknown) => (logger.warn({ vm: vm.name, err: errorMessage(err) }, 'the saved live state does not restore; starting the VM cold'), false),
        );
      }
      if (r.wasRunning && !resumed) await virsh.start(vm.name);
    } else if (r.liveStateFile && (await exists(r.liveStateFile))) {
      // Saved but not yet undefined: the definition is still there.
      await virsh.restore(r.liveStateFile);
    }
    // The VM is back: its saved definition and state are stale, and only a failed
    // rollback's files are kept when the restore's directory is cleaned up.
    for (const f of [r.liveXmlFile, r.liveStateFile]) if (f) await rm(f, { force: true });
    logger.warn({ vm: vm.name, target: r.target }, 'restore rolled back');
  } catch (err) {
    logger.error({ vm: vm.name, err: errorMessage(err) }, `rolling the restore back failed: the previous images and live.xml are in ${path.dirname(r.liveXmlFile)}; see docs/restore-runbook.md`);
    throw new BackupError(`rolling the restore back failed: ${errorMessage(err)}; the previous images and live.xml are in ${path.dirname(r.liveXmlFile)}`, ReturnCode.cannotMoveImageBack, { cause: err });
  }
}

/**
 * Stop the VM a restore replaces without waiting for its guest. Its current
 * state is discarded by a successful restore, so a graceful ACPI shutdown
 * buys nothing and waits for a guest that may never answer. It is saved
 * (`virsh save`) rather than destroyed: the save takes as long as writing
 * its RAM, whatever the guest does, and is an exact rollback point — a
 * rollback resumes the guest with its page cache and every write it made,
 * where `virsh destroy` would hand back disks as after a power cut. The
 * state goes into the restore's work directory (retain filesystem, removed
 * with it once the restore succeeded). A VM that is neither running nor
 * able to run (crashed, suspended to RAM) has nothing worth keeping and is destroyed.
 */
async function stopLiveVm(ctx: StepContext, workDir: string, dest: string): Promise<{ how: 'saved' | 'destroyed' | 'was off'; stateFile?: string; seconds: number }> {
  const { virsh, vm } = ctx;
  const t0 = performance.now();
  const state = await virsh.domState(vm.name);
  if (state === 'shut off') return { how: 'was off', seconds: seconds(t0) };
  if (state === 'crashed' || state === 'pmsuspended' || state === 'other') {
    await virsh.destroy(vm.name);
    return { how: 'destroyed', seconds: seconds(t0) };
  }
  const priv = await createPrivateStateFile(workDir, 'live.state');
  try {
    await virsh.save(vm.name, priv.file);
  } catch (err) {
    // libvirtd may have completed what virsh reported as failed: judge by the domain.
    if (!/\(saved\)/.test(await virsh.domStateReason(vm.name))) {
      await priv.remove();
      throw new BackupError(`cannot save ${vm.name} before the restore (nothing was changed, it still runs): ${errorMessage(err)}`, ReturnCode.cannotSaveMachineState, { cause: err });
    }
  }
  await rename(priv.file, dest);
  await priv.remove();
  return { how: 'saved', stateFile: dest, seconds: seconds(t0) };
}

/** An image's path in the restore's directory (`<name>.<leaf>`): never one of the restore's own files. */
function retainedImagePath(name: string, w: RestoreWork): string {
  assertSafeName('disk image file name', name);
  const { work } = w;
  if ([work.stateFileName, work.xmlFileName, work.ldifFileName].includes(name) || name.startsWith('live-') || name.endsWith('.partial')) {
    throw new BackupError(`disk image name ${name} collides with a file of the restore`, ReturnCode.unsafeDomainDefinition);
  }
  return w.unretained(name);
}

/** Which retained image goes where: by target device, through the backup's XML. */
export function retainedImagesByTarget(backupXml: string, w: RestoreWork): Map<string, string> {
  return new Map(
    parseDomainDisks(backupXml)
      .filter((d) => d.device === 'disk' && d.type === 'file' && d.source)
      .map((d) => [d.target, retainedImagePath(path.basename(d.source as string), w)]),
  );
}

/** Both sides of a restore: the backup's LDIF and XML, the live VM's (none for a restore as a new VM). */
export async function restoreInputs(ctx: StepContext, w: RestoreWork, backupXml: string): Promise<RestoreInputs> {
  const { vm, directory, virsh } = ctx;
  const backupLdif = parseLdif(await readFile(w.unretained(w.work.ldifFileName), 'utf8'));
  const liveLdif = !w.asNew && (await directory.getVm(vm.name)) ? parseLdif(await directory.exportVmLdif(vm.name)) : undefined;
  const liveXml = !w.asNew && (await virsh.domainExists(vm.name)) ? await virsh.dumpXml(vm.name, { inactive: true }) : undefined;
  return { vmDn: vm.dn, backupLdif, liveLdif, backupXml, liveXml };
}

/**
 * The definition to define, from the allowlist (src/domain/restore/domainAllowlist.ts):
 * checked against the VM's current definition (for a restore as new, the
 * original's), emulator pinned to the live one or this node's.
 */
async function allowlistedDefinition(ctx: StepContext, xml: string, o: { target: string; asNew: boolean; liveXml: string | undefined }): Promise<string> {
  const { virsh, vm } = ctx;
  const reference = o.liveXml ?? (o.asNew && (await virsh.domainExists(vm.name)) ? await virsh.dumpXml(vm.name, { inactive: true }) : undefined);
  const virtType = /^<domain\b[^>]*\stype=['"]([a-z]+)['"]/m.exec(xml)?.[1] ?? 'kvm';
  const arch = /<type\b[^>]*\sarch=['"]([A-Za-z0-9_]+)['"]/.exec(xml)?.[1] ?? 'x86_64';
  const caps = await virsh.domainCapabilities(virtType === 'qemu' ? 'qemu' : 'kvm', arch);
  const liveEmulator = reference ? /<emulator>([^<]+)<\/emulator>/.exec(reference)?.[1] : undefined;
  const decided = allowlistedDomainXml(xml, {
    imageRoots: ctx.imageRoots,
    liveXml: reference,
    emulator: liveEmulator ?? caps.emulator,
    firmware: caps.firmware,
    name: o.target,
  });
  // With no live definition, a UUID in the backup must not be another VM's: define would replace that VM.
  const uuid = /<uuid>([^<]*)<\/uuid>/.exec(decided)?.[1]?.trim();
  if (uuid && !o.liveXml && (await virsh.domainExists(uuid))) {
    throw new BackupError(`the backup's UUID ${uuid} belongs to another libvirt domain`, ReturnCode.unsafeDomainDefinition);
  }
  return decided;
}

/**
 * restore: bring the VM back to the backup's moment with the decided
 * configuration. Everything is checked before the live VM is touched; then
 * the VM is stopped at once by saving it into the work directory (see
 * stopLiveVm) and undefined, the verified
 * images are renamed over the live paths, the decided directory subtree is
 * written back (never ou=backup), the decided XML is defined, and the state
 * file restored with it. A placeholder state (the VM was off) or
 * sstRestoreVMWithoutState means define and cold-boot instead; a VM that was
 * off stays off unless sstVirtualizationVirtualMachineForceStart.
 * With a restore target (restore as new), the original VM is not touched:
 * new name, no UUID (libvirt assigns one), new MACs, disks beside the originals.
 */
export async function restoreStep(ctx: StepContext): Promise<StepResult> {
  const { vm, virsh, directory, settings, logger } = ctx;
  const t0 = performance.now();
  const w = await loadRestoreWork(ctx);
  const { request, target, asNew, work } = w;

  // --- Decide (pure) and check, touching nothing.
  const backupXml = await readFile(w.unretained(work.xmlFileName), 'utf8');
  const inputs = await restoreInputs(ctx, w, backupXml);
  const { liveXml } = inputs;
  // The request's decisions (the CLI), else the web UI's decision file, else the backup.
  const file = request.decisions ? undefined : await readDecisionLdif(work, vm.dn);
  const ldifFrom = file ? 'decision file' : 'backup';
  const decided = file ? applyDecisionFile(inputs, file) : applyDecisions(inputs, request.decisions ?? { prefer: 'backup', overrides: {} });
  let { ldif, xml } = decided;
  if (asNew) {
    if (await directory.getVm(target)) throw new BackupError(`a VM ${target} exists in the directory already`, ReturnCode.restoreTargetExists);
    if (await virsh.domainExists(target)) throw new BackupError(`libvirt knows a VM ${target} already`, ReturnCode.restoreTargetExists);
    ({ ldif, xml } = renameForRestoreAs(ldif, xml, {
      oldName: vm.name,
      newName: target,
      oldVmDn: vm.dn,
      newVmDn: siblingVmDn(vm.dn, target),
      diskPath: (p) => path.join(path.dirname(p), `${target}-${path.basename(p)}`),
      newMac: () => randomMac(),
    }));
  }
  xml = await allowlistedDefinition(ctx, stripBackingStores(xml), { target, asNew, liveXml });
  await writeFileDurably(work.retainPath('decided.xml'), xml);
  await writeFileDurably(work.retainPath('decided.ldif'), formatLdif(ldif));

  const retainedByTarget = retainedImagesByTarget(backupXml, w);
  const moves: { from: string; to: string; target: string }[] = [];
  const liveSources = new Set(liveXml ? parseDomainDisks(liveXml).flatMap((d) => (d.source ? [d.source] : [])) : []);
  for (const d of parseDomainDisks(xml)) {
    if (d.device !== 'disk' || d.type !== 'file' || !d.source) continue;
    const from = retainedByTarget.get(d.target);
    if (!from || !(await exists(from))) throw new BackupError(`no retained image for disk ${d.target}`, ReturnCode.missingNecessaryFiles);
    if (!ctx.imageRoots.some((r) => isBelow(r, d.source as string))) {
      throw new BackupError(`disk ${d.target} would go to ${d.source}, outside the image roots`, ReturnCode.diskOutsideImageRoots);
    }
    if (!(await sameFilesystem(path.dirname(d.source), work.retainDir))) {
      throw new BackupError(`${path.dirname(d.source)} is not on the retain filesystem; the move must be a rename`, ReturnCode.retainNotOnImageFilesystem);
    }
    if (path.basename(d.source).endsWith(`.${work.leaf}`)) {
      // Its live image would be moved aside under a name the restore's clean-up takes for a backup's file.
      throw new BackupError(`disk ${d.target} has the file name ${path.basename(d.source)}, ending like the backup's files`, ReturnCode.unsafeDomainDefinition);
    }
    if (asNew && (await exists(d.source))) throw new BackupError(`${d.source} exists; restore as new never overwrites a file`, ReturnCode.restoreTargetExists);
    if (!asNew && !liveSources.has(d.source) && (await exists(d.source))) {
      throw new BackupError(`${d.source} exists and is not a disk of ${vm.name}; a restore never overwrites another file`, ReturnCode.restoreTargetExists);
    }
    // QEMU will open the image in the decided format and follow its header's backing file.
    await assertSafeImageHeader(ctx.qemuImg, from, d.format ?? 'raw', ctx.imageRoots);
    moves.push({ from, to: d.source, target: d.target });
  }
  if (moves.length === 0) {
    // Every backup holds a file disk (a VM without one has no backup directory); and
    // without one, a restore cut short could not be told apart from the live VM.
    throw new BackupError('the backup\'s domain definition has no file disk: it is not a definition this backup was taken with', ReturnCode.unsafeDomainDefinition);
  }
  const stateFile = w.unretained(work.stateFileName);
  const placeholder = await isPlaceholderState(stateFile);
  ctx.onProgress?.({ step: 'restore', vm: vm.name, leaf: ctx.leaf, message: `restoring ${target}${asNew ? ` as a new VM from ${vm.name}` : ''}` });

  // --- From here on the live VM changes. Until the decided VM is defined,
  // every change can be undone: the live definition is kept in live.xml and
  // the live images are moved aside, not overwritten.
  const liveXmlFile = work.retainPath('live.xml');
  if (liveXml) await writeFileDurably(liveXmlFile, liveXml);
  const wasRunning = !asNew && (await virsh.domainExists(vm.name)) && (await virsh.domState(vm.name)) !== 'shut off';
  const asides: { dest: string; aside: string }[] = [];
  const placed: { from: string; to: string }[] = [];
  let undefinedLive = false;
  let liveStateFile: string | undefined;
  try {
    if (!asNew && (await virsh.domainExists(vm.name))) {
      const stopped = await stopLiveVm(ctx, work.retainDir, work.retainPath('live.state'));
      liveStateFile = stopped.stateFile;
      logger.info({ vm: vm.name, how: stopped.how, stopSeconds: stopped.seconds }, 'VM stopped for the restore');
      await virsh.undefine(vm.name);
      undefinedLive = true;
      faultPoint('restore:after-undefine');
    }
    for (const m of moves) {
      try {
        if (await exists(m.to)) {
          const aside = work.retainPath(`live-${path.basename(m.to)}`);
          await rename(m.to, aside);
          asides.push({ dest: m.to, aside });
        }
        await rename(m.from, m.to);
        placed.push(m);
        faultPoint('restore:after-move');
        await chownByName(m.to, settings.image.owner, settings.image.group, logger);
        await chmodNoFollow(m.to, settings.image.mode);
      } catch (err) {
        throw new BackupError(`cannot move the image of ${m.target} to ${m.to}: ${errorMessage(err)}`, ReturnCode.cannotMoveImageBack, { cause: err });
      }
    }
    try {
      await withPrivateXmlFile(work.retainDir, target, xml, (f) => virsh.define(f));
    } catch (err) {
      throw new BackupError(`virsh define failed: ${errorMessage(err)}`, ReturnCode.cannotDefineMachine, { cause: err });
    }
  } catch (err) {
    await rollBack(ctx, { placed, asides, undefinedLive, liveXmlFile, liveStateFile, wasRunning, asNew, target });
    throw err instanceof BackupError
      ? new BackupError(`${err.message}; rolled back: ${asNew ? 'nothing of the copy is left' : `${vm.name} is back on its previous images and definition`}`, err.code, { cause: err })
      : err;
  }
  // From here on the restore only goes forward; a daemon that dies now is
  // completed by recoverInterruptedRestore from the work directory's files.
  faultPoint('restore:after-define');
  const started = await startDecidedVm(ctx, { workDir: work.retainDir, target, xml, stateFile, placeholder });
  faultPoint('restore:after-start');
  await finishRestore(ctx, work, target, ldif);
  const result = { executionTime: { restore: seconds(t0) } };
  logger.info({ vm: vm.name, leaf: ctx.leaf, target, asNew, started, ldifFrom, applied: decided.applied.length, ...result.executionTime }, 'restore done');
  return result;
}

/**
 * virsh reads a definition from a file: it gets one in a private (0700)
 * directory of the work directory, where nobody else can swap it between our
 * write and virsh's read, and which a kill leaves for the restore's clean-up.
 */
async function withPrivateXmlFile(workDir: string, name: string, xml: string, use: (file: string) => Promise<void>): Promise<void> {
  const priv = await mkdtemp(path.join(workDir, PRIVATE_DIR_PREFIX));
  try {
    const file = path.join(priv, `${name}.xml`);
    await writeFile(file, xml, { mode: 0o600 });
    await use(file);
  } finally {
    await rm(priv, { recursive: true, force: true });
  }
}

/**
 * Start the decided VM, once defined with its images in place: from the
 * backup's state file with the decided XML, or cold-booted — the state is a
 * placeholder (the VM was off: it stays off unless forceStart) or
 * restoreWithoutState is set, or `cold` (a restore from the state was tried
 * already and failed). Shared by restoreStep and the recovery that completes it.
 */
export async function startDecidedVm(ctx: StepContext, o: { workDir: string; target: string; xml: string; stateFile: string; placeholder: boolean; cold?: boolean }): Promise<'restored' | 'booted' | 'off'> {
  const { virsh, settings, logger } = ctx;
  const { target, placeholder } = o;
  let started: 'restored' | 'booted' | 'off';
  const off = placeholder && !settings.forceStart;
  if (!off) await writeFileDurably(path.join(o.workDir, DECIDED_STARTING), `${new Date().toISOString()}\n`);
  if (placeholder || settings.restoreWithoutState) {
    started = off ? 'off' : 'booted';
  } else if (o.cold) {
    started = 'booted';
  } else {
    try {
      await withPrivateXmlFile(o.workDir, target, o.xml, (f) => faultPointWhile('restore:restoring-state', virsh.restore(o.stateFile, f)));
      started = 'restored';
    } catch (err) {
      if ((await virsh.domState(target).catch(() => undefined)) === 'running') {
        // libvirtd completed what virsh reported as failed (a timeout, a lost connection).
        logger.warn({ vm: target, err: errorMessage(err) }, 'virsh restore reported a failure, but the VM runs from the state');
        started = 'restored';
      } else {
        // The decided configuration may not fit the saved machine (more memory, other MACs):
        // its disks are back and the definition is right, so boot it instead.
        logger.warn({ vm: target, err: errorMessage(err) }, 'the state file does not fit the decided configuration; cold-booting instead');
        started = 'booted';
      }
    }
  }
  if (started === 'booted') {
    try {
      await virsh.start(target);
    } catch (err) {
      throw new BackupError(`cannot start ${target}: ${errorMessage(err)}`, ReturnCode.cannotStartMachine, { cause: err });
    }
  }
  return started;
}

/**
 * The restore's end, once the decided VM runs (or stays off by the rules):
 * the decided directory subtree written, no disk left referencing retain,
 * and the work directory removed with the previous live images moved aside.
 * The guest first: the VM runs again before the directory is written, so a
 * directory failure leaves a running VM and a clear code, not an undefined one.
 */
export async function finishRestore(ctx: StepContext, work: BackupLayout, target: string, ldif: LdifEntry[]): Promise<void> {
  const { virsh, directory, settings, logger } = ctx;
  try {
    await directory.writeVmSubtree(target, ldif);
  } catch (err) {
    throw new BackupError(`the VM is restored, but its directory entries could not be written (the decided LDIF is ${work.retainPath('decided.ldif')}): ${errorMessage(err)}`, ReturnCode.cannotSaveBackendEntry, { cause: err });
  }
  const live = parseDomainDisks(await virsh.dumpXml(target));
  const stale = live.find((d) => d.backingChain.some((b) => isBelow(settings.retainDirectory, b)));
  if (stale) throw new BackupError(`restored disk ${stale.target} still references retain`, ReturnCode.chainStillReferencesRetain);
  // The previous live images moved aside go too: the restore replaced them.
  await removeRestoreWorkDir(work, settings.retainDirectory, { keepRollback: false, logger });
}
