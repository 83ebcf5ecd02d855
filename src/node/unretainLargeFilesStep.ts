import { mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import { assertNoSymlinkBelow, listRegularFiles } from './safeFs.js';
import path from 'node:path';
import { parseDomainDisks } from '../hypervisor/domainXml.js';
import type { ImageFormat } from '../hypervisor/QemuImg.js';
import { assertSafeImageHeader } from './imageHeaderCheck.js';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { MANIFEST_NAME, ROTATION_MARKER } from '../domain/layout.js';
import { finishInterruptedRotation } from './rotateChains.js';
import { materializeChain } from './materializeChain.js';
import { readManifest } from './retainStep.js';
import { sparseCopy } from './sparseCopy.js';
import { digestKindOf, digestMismatch } from './fileDigest.js';
import { exists } from './durableFs.js';
import { loadRestoreWork } from './restoreWork.js';
import { PRIVATE_DIR_PREFIX } from './restoreWorkDir.js';
import { checkDecisionLdif } from './restoreDecisionLdif.js';
import { restoreInputs } from './restoreStep.js';
import { seconds, type StepContext, type StepResult } from './StepContext.js';
import { requireRoomToUnretain } from './unretainSpace.js';
import { faultPoint } from './faultPoint.js';

/**
 * unretainLargeFiles: copy the state file and the disk images into the
 * restore's retain directory as `<name>.<leaf>` (sparse-aware), each checked against the
 * backup's manifest (size and the digest it records) and every image with `qemu-img check`. A
 * mismatch fails with 38 (corrupt disk image) before anything live is touched.
 * Backups of the original implementation have no manifest: only the image
 * check applies to them. The web UI's decision (`<vm>.ldif`, see
 * restoreDecisionLdif.ts) is checked first, so that a refused one costs no copy.
 */
export async function unretainLargeFilesStep(ctx: StepContext): Promise<StepResult> {
  const { layout, logger, vm } = ctx;
  const t0 = performance.now();
  const w = await loadRestoreWork(ctx);
  const { work, request, unretained } = w;
  const backupXml = await readFile(unretained(work.xmlFileName), 'utf8');
  if (!request.decisions) await checkDecisionLdif(work, await restoreInputs(ctx, w, backupXml));
  await requireRoomToUnretain(ctx);
  const suffix = `.${layout.leaf}`;
  const small = new Set([layout.xmlFileName, layout.ldifFileName]);
  // Only regular files are copied: a symlink in the backup would have root copy whatever it names.
  await assertNoSymlinkBelow(ctx.settings.rootDirectory, layout.backupDir, 'directory');
  const names = (await listRegularFiles(layout.backupDir))
    .filter((n) => n.endsWith(suffix))
    .map((n) => n.slice(0, -suffix.length))
    .filter((n) => !small.has(n))
    .sort();
  if (!names.includes(layout.stateFileName)) throw new BackupError(`the backup has no ${layout.stateFileName}${suffix}`, ReturnCode.missingNecessaryFiles);
  // The format each image is read in comes from the backup's definition, never from its header.
  const formats = new Map(
    parseDomainDisks(backupXml)
      .filter((d) => d.type === 'file' && d.source !== undefined)
      .map((d) => [path.basename(d.source as string), d.format ?? 'raw']),
  );
  // A rotation a kill interrupted is finished first: the chain must be whole before it is read.
  await finishInterruptedRotation(ctx);
  if (await exists(path.join(layout.backupDir, ROTATION_MARKER))) {
    throw new BackupError(`backup ${layout.leaf} is being removed by rotation; it cannot be restored`, ReturnCode.missingNecessaryFiles);
  }
  const manifest = (await exists(layout.manifestPath)) ? await readManifest(layout.manifestPath) : undefined;
  if (!manifest) logger.warn({ vm: vm.name, leaf: ctx.leaf }, `no ${MANIFEST_NAME} (a backup of the original implementation?): checking images with qemu-img only`);

  const copied: string[] = [];
  const fail = async (message: string, cause?: unknown): Promise<never> => {
    for (const f of copied) await rm(f, { force: true });
    throw new BackupError(message, ReturnCode.corruptDiskImage, { cause });
  };
  for (const name of names) {
    const source = layout.backupPath(name);
    const dest = unretained(name);
    const partial = `${dest}.partial`;
    await rm(partial, { force: true });
    const listed = manifest?.files.find((f) => f.name === `${name}${suffix}`);
    if (manifest && !listed) await fail(`${name}${suffix} is not in the backup's manifest`);
    if (listed?.backing) {
      // An incremental image: its chain is checked member by member, then converted into one whole image.
      // qemu-img follows a symlink where it creates its output: it works in a directory only root can enter.
      const priv = await mkdtemp(path.join(work.retainDir, PRIVATE_DIR_PREFIX));
      try {
        const out = path.join(priv, name);
        await materializeChain(ctx, { leaf: layout.leaf, name: listed.name }, out, formats.get(name));
        await rename(out, dest);
      } catch (err) {
        await fail(`cannot restore ${name}${suffix} from its chain: ${errorMessage(err)}`, err);
      } finally {
        await rm(priv, { recursive: true, force: true });
      }
      copied.push(dest);
      continue;
    }
    let result;
    try {
      result = await sparseCopy(source, partial, (done, total) => {
        if (done > 0) faultPoint('unretainLargeFiles:copying');
        ctx.onProgress?.({ step: 'unretainLargeFiles', vm: vm.name, leaf: ctx.leaf, message: `copying ${name}`, done, total });
      }, ctx.signal, listed ? digestKindOf(listed) : undefined);
    } catch (err) {
      await rm(partial, { force: true });
      throw new BackupError(`cannot copy ${source}: ${errorMessage(err)}`, ReturnCode.cannotCopyImage, { cause: err });
    }
    copied.push(partial);
    const mismatch = listed ? digestMismatch(result, listed) : undefined;
    if (mismatch) await fail(`${name}${suffix} does not match the manifest (${mismatch})`);
    if (name !== layout.stateFileName) {
      const format = formats.get(name);
      if (format === undefined) {
        // Not a disk of the definition: the restore never uses it, so it is not opened either.
        logger.warn({ vm: vm.name, leaf: ctx.leaf, file: name }, 'file of the backup is no disk of its definition; not checked');
      } else {
        try {
          await assertSafeImageHeader(ctx.qemuImg, partial, format, ctx.imageRoots);
        } catch (err) {
          for (const f of copied) await rm(f, { force: true });
          throw err;
        }
        try {
          await ctx.qemuImg.check(partial, format as ImageFormat);
        } catch (err) {
          await fail(`qemu-img check of ${name}${suffix} failed: ${errorMessage(err)}`, err);
        }
      }
    }
    await rename(partial, dest);
    copied[copied.length - 1] = dest;
  }
  const result = { executionTime: { unretainLargeFiles: seconds(t0) } };
  logger.info({ vm: vm.name, leaf: ctx.leaf, files: names, verified: manifest ? 'manifest+qemu-img' : 'qemu-img', ...result.executionTime }, 'large files unretained');
  return result;
}
