import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { parseDomainDisks } from '../hypervisor/domainXml.js';
import { isBelow } from './backupDisks.js';
import { seconds, type StepContext, type StepResult } from './StepContext.js';

/**
 * Merge: pull the retained images' data into the live overlays with
 * libvirt's block job API, so that nothing live references retain any more.
 * A shut-off VM is started paused for the pull (it runs no guest code) and
 * destroyed again afterwards; the result is checked, not assumed.
 */
export async function mergeStep(ctx: StepContext): Promise<StepResult> {
  const { vm, virsh, layout, logger } = ctx;
  const t0 = performance.now();
  if (!(await virsh.domainExists(vm.name))) throw new BackupError(`VM ${vm.name} is not defined in libvirt`, ReturnCode.cannotFindMachine);
  const runState = await virsh.domState(vm.name);
  const startedByUs = runState === 'shut off' || runState === 'shutdown' || runState === 'crashed';
  if (startedByUs) {
    try {
      await virsh.start(vm.name, { paused: true });
    } catch (err) {
      throw new BackupError(`cannot start ${vm.name} paused for the merge: ${errorMessage(err)}`, ReturnCode.cannotStartMachine, { cause: err });
    }
  }
  try {
    await pullRetainedImages(ctx);
  } finally {
    if (startedByUs) {
      // Started paused, never ran guest code: destroying it loses nothing.
      await virsh.destroy(vm.name).catch((err: unknown) => logger.error({ vm: vm.name, err: errorMessage(err) }, 'cannot stop the VM started for the merge'));
    }
  }
  const result = { executionTime: { merge: seconds(t0) } };
  logger.info({ vm: vm.name, leaf: ctx.leaf, runState, ...result.executionTime, retainDir: layout.retainDir }, 'merge done');
  return result;
}

/** Block-pull every live disk whose chain runs into retain; then prove none does. */
export async function pullRetainedImages(ctx: StepContext): Promise<void> {
  const { vm, virsh, qemuImg, settings } = ctx;
  const retainRoot = settings.retainDirectory;
  const before = parseDomainDisks(await virsh.dumpXml(vm.name));
  for (const d of before) {
    const lastRetained = d.backingChain.map((b) => isBelow(retainRoot, b)).lastIndexOf(true);
    if (lastRetained < 0) continue;
    // A linked clone's template below the retained image stays where it is.
    const base = d.backingChain[lastRetained + 1];
    ctx.onProgress?.({ step: 'merge', vm: vm.name, leaf: ctx.leaf, message: `pulling ${d.target}` });
    try {
      await virsh.blockPull(vm.name, d.target, settings.bandwidthMerge, base);
    } catch (err) {
      throw new BackupError(`block pull of ${d.target} failed: ${errorMessage(err)}`, ReturnCode.cannotMergeDiskImages, { cause: err });
    }
  }
  const after = parseDomainDisks(await virsh.dumpXml(vm.name));
  for (const d of after) {
    const stale = d.backingChain.find((b) => isBelow(retainRoot, b));
    if (stale !== undefined) {
      throw new BackupError(`after the merge ${d.target} still references ${stale}`, ReturnCode.cannotMergeDiskImages);
    }
    if (d.type === 'file' && d.device === 'disk' && d.source !== undefined && before.find((b) => b.target === d.target)?.backingChain.length) {
      // The image header is what a later start or backup reads: check it too.
      const info = await qemuImg.info(d.source, { shared: true });
      if (info.backingFile !== undefined && isBelow(retainRoot, info.backingFile)) {
        throw new BackupError(`after the merge the header of ${d.source} still names ${info.backingFile}`, ReturnCode.cannotMergeDiskImages);
      }
    }
  }
}
