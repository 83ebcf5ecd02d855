import { readFile, readdir, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { isLeafName } from '../domain/leafName.js';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { KEEP_FAILED_RECORD, KEPT_RECORD_SUFFIX, LIVE_OVERLAY_SUFFIX, STARTED_PAUSED_MARKER } from '../domain/layout.js';
import { parseDomainDisks } from '../hypervisor/domainXml.js';
import { isImageFormat } from '../hypervisor/QemuImg.js';
import { leafActive } from '../control/decideBatch.js';
import { isBelow } from './backupDisks.js';
import { exists } from './durableFs.js';
import { assertNoSymlinkBelow, listRegularFiles } from './safeFs.js';
import type { StepContext } from './StepContext.js';

/**
 * The first file below `dir` that a disk chain of the VM (live and
 * persistent definition, and each top image's own backing file) still uses.
 * Such a file is never copied away, deleted or counted as an orphan.
 */
export async function liveReferenceBelow(ctx: StepContext, dir: string): Promise<{ target: string; file: string } | undefined> {
  const { vm, virsh, qemuImg } = ctx;
  // Both definitions at once (a shut-off VM's live one is its persistent one); a VM libvirt does not know references nothing.
  const xmls = await Promise.all([virsh.dumpXml(vm.name, { inactive: true }), virsh.dumpXml(vm.name)]).catch((err: unknown) => {
    if (err instanceof BackupError && err.code === ReturnCode.cannotFindMachine) return [];
    throw err;
  });
  for (const xml of xmls) {
    for (const d of parseDomainDisks(xml)) {
      const refs = [...(d.source === undefined ? [] : [d.source]), ...d.backingChain];
      if (d.type === 'file' && d.device === 'disk' && d.source !== undefined && (await exists(d.source))) {
        const info = await qemuImg.info(d.source, { shared: true, ...(isImageFormat(d.format) ? { format: d.format } : {}) });
        if (info.backingFile) refs.push(info.backingFile);
      }
      const file = refs.find((r) => isBelow(dir, r));
      if (file !== undefined) return { target: d.target, file };
    }
  }
  return undefined;
}

/**
 * Retain directories of this VM's earlier backups that nothing will read
 * again hold full copies of its disks on the images' filesystem; night after
 * night (a retain failing for want of room, say) they would fill it and
 * pause every VM of the node. As the snapshot of a new backup starts, the
 * retain directory of each earlier backup whose leaf has ended (failed, or
 * finished but not cleaned up) or no longer exists (`kvmbackup --force`,
 * `delete`, by hand) is removed, when
 *   - no active leaf and no restore of the VM names it,
 *   - no disk chain of the VM uses a file in it, and
 *   - it holds only what a backup puts in retain: the state, XML and LDIF,
 *     the disk images its XML names, their live overlays, kept records and
 *     `.partial` leftovers.
 * Anything else is left and reported. Until a newer backup starts, a failed
 * retain can be issued again on its copies.
 */
export async function removeOrphanedRetainDirs(ctx: StepContext): Promise<string[]> {
  const { layout, logger, vm } = ctx;
  const vmRetain = path.dirname(layout.retainDir);
  if (!(await exists(vmRetain))) return [];
  await assertNoSymlinkBelow(ctx.settings.retainDirectory, vmRetain, 'directory');
  const candidates = (await readdir(vmRetain, { withFileTypes: true }))
    .filter((e) => e.isDirectory() && isLeafName(e.name) && e.name !== layout.leaf)
    .map((e) => e.name);
  if (candidates.length === 0) return [];
  const leaves = await ctx.directory.listLeaves(vm.name);
  const inUse = new Map(leaves.filter((l) => leafActive(l)).map((l) => [l.leaf, `its leaf is in mode ${l.mode}`]));
  for (const l of leaves) {
    const request = await ctx.directory.getRestoreRequest(l.dn);
    if (request?.retain !== undefined) inUse.set(request.retain, `work directory of a restore of ${l.leaf}`);
  }
  const removed: string[] = [];
  for (const name of candidates) {
    const dir = path.join(vmRetain, name);
    const keep = inUse.get(name) ?? (await whyNotOrphaned(ctx, dir));
    if (keep !== undefined) {
      logger.warn({ vm: vm.name, retainDir: dir, reason: keep }, 'retain directory of an earlier backup is left');
      continue;
    }
    for (const f of await listRegularFiles(dir)) await rm(path.join(dir, f));
    await rmdir(dir);
    removed.push(name);
    const leaf = leaves.find((l) => l.leaf === name);
    logger.info({ vm: vm.name, retainDir: dir, leafMode: leaf?.mode, leafReturnValue: leaf?.returnValue }, leaf ? 'removed the retain directory of an earlier backup that ended' : 'removed the retain directory of a backup whose leaf no longer exists');
  }
  return removed;
}

/** Why `dir` must stay although no leaf names it, or undefined. */
async function whyNotOrphaned(ctx: StepContext, dir: string): Promise<string | undefined> {
  const ref = await liveReferenceBelow(ctx, dir);
  if (ref) return `disk ${ref.target} still uses ${ref.file}`;
  const files = await listRegularFiles(dir).catch(() => undefined);
  if (files === undefined) return 'it holds something other than regular files';
  const ours = await backupRetainNames(ctx, dir);
  const strange = files.filter((f) => !ours.has(f.endsWith('.partial') ? f.slice(0, -'.partial'.length) : f));
  return strange.length > 0 ? `it holds files no backup puts there: ${strange.join(', ')}` : undefined;
}

/** The names a backup's retain directory can hold, from the XML it holds. */
async function backupRetainNames(ctx: StepContext, dir: string): Promise<Set<string>> {
  const { layout } = ctx;
  const names = new Set([layout.stateFileName, layout.xmlFileName, layout.ldifFileName, KEEP_FAILED_RECORD, STARTED_PAUSED_MARKER]);
  const xml = await readFile(path.join(dir, layout.xmlFileName), 'utf8').catch(() => '');
  for (const d of parseDomainDisks(xml)) {
    if (d.source === undefined) continue;
    const image = path.basename(d.source);
    for (const n of [image, `${image}${LIVE_OVERLAY_SUFFIX}`, `${image}${KEPT_RECORD_SUFFIX}`]) names.add(n);
  }
  return names;
}
