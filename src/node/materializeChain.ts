import { rm } from 'node:fs/promises';
import path from 'node:path';
import { relativeBackingPath, walkChain, type ChainLink } from '../domain/backupChain.js';
import { chainSpec } from '../hypervisor/QemuImg.js';
import { finishedIterations, listIterationDirs, type ManifestFile } from './backupIterations.js';
import { sparseCopy } from './sparseCopy.js';
import { digestKindOf, digestMismatch, fileDigest } from './fileDigest.js';
import type { StepContext } from './StepContext.js';

/** One member of an image chain with what its manifest says of it. */
export interface ChainMember {
  link: ChainLink;
  path: string;
  entry: ManifestFile;
}

/**
 * The chain of an incremental image, top first down to its whole image,
 * from the manifests of the VM's finished backups. Throws when a member is
 * missing from them or has not the recorded size.
 */
export async function chainMembers(ctx: Pick<StepContext, 'settings' | 'layout'>, start: ChainLink): Promise<ChainMember[]> {
  const dirs = await listIterationDirs(ctx.settings.rootDirectory, ctx.layout.vmBackupDir);
  const walk = walkChain(await finishedIterations(dirs), start);
  if (!walk.ok) throw new Error(walk.problem);
  return [...walk.links, walk.root].map((link) => {
    const dir = dirs.find((d) => d.leaf === link.leaf);
    const entry = dir?.manifest?.files.find((f) => f.name === link.name);
    if (dir === undefined || entry === undefined) throw new Error(`${link.leaf}/${link.name} is not in a manifest`);
    return { link, path: path.join(dir.dir, link.name), entry };
  });
}

/**
 * Check every member of a chain against its own manifest (size, digest),
 * its header (qcow2, backing file exactly the recorded relative name, no
 * data file) and `qemu-img check`. Returns the problems found, none when
 * the chain is intact.
 */
export async function checkChainMembers(ctx: Pick<StepContext, 'qemuImg'>, members: readonly ChainMember[]): Promise<string[]> {
  const problems: string[] = [];
  for (const m of members) {
    const where = `${m.link.leaf}/${m.link.name}`;
    try {
      const mismatch = digestMismatch(await fileDigest(m.path, digestKindOf(m.entry)), m.entry);
      if (mismatch) {
        problems.push(`${where} does not match its manifest (${mismatch})`);
        continue;
      }
      const header = await ctx.qemuImg.info(m.path, { format: 'qcow2' });
      const expected = m.entry.backing ? relativeBackingPath(m.entry.backing) : undefined;
      if (header.backingName !== expected) problems.push(`${where} names ${JSON.stringify(header.backingName)} as backing file, not ${JSON.stringify(expected)}`);
      await ctx.qemuImg.check(m.path, 'qcow2');
    } catch (err) {
      problems.push(`${where}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  return problems;
}

/**
 * Restore one incremental image as a whole qcow2 image at `dest`. Every
 * member of the chain is first copied next to `dest` (never through a
 * symlink, hashed on the way) and checked against its manifest and with
 * `qemu-img check`; the private copies are then converted with every layer
 * pinned (chainSpec). qemu-img so reads exactly the checked bytes, whatever
 * a header says or a writer of the backup directory swaps in meanwhile.
 */
export async function materializeChain(ctx: StepContext, start: ChainLink, dest: string, definitionFormat: string | undefined): Promise<void> {
  if (definitionFormat !== 'qcow2') throw new Error(`the definition gives the disk format ${JSON.stringify(definitionFormat)}; incremental images exist only of qcow2 disks`);
  const members = await chainMembers(ctx, start);
  const copies: string[] = [];
  try {
    for (const [i, m] of members.entries()) {
      const copy = `${dest}.chain-${i}`;
      await rm(copy, { force: true });
      copies.push(copy);
      const r = await sparseCopy(m.path, copy, (done, total) => ctx.onProgress?.({ step: 'unretainLargeFiles', vm: ctx.vm.name, leaf: ctx.leaf, message: `copying ${m.link.name} (${i + 1} of ${members.length} of the chain)`, done, total }), ctx.signal, digestKindOf(m.entry));
      const mismatch = digestMismatch(r, m.entry);
      if (mismatch) throw new Error(`${m.link.leaf}/${m.link.name} does not match its manifest (${mismatch})`);
      await ctx.qemuImg.check(copy, 'qcow2');
    }
    ctx.onProgress?.({ step: 'unretainLargeFiles', vm: ctx.vm.name, leaf: ctx.leaf, message: `converting ${start.name} and its chain into one image` });
    await ctx.qemuImg.convertFlat(chainSpec(copies), dest, 'qcow2', ctx.signal);
  } finally {
    for (const c of copies) await rm(c, { force: true });
  }
  const out = await ctx.qemuImg.info(dest, { format: 'qcow2' });
  if (out.backingFile !== undefined) throw new Error(`the converted image still names ${out.backingFile} as backing`);
  await ctx.qemuImg.check(dest, 'qcow2');
  ctx.logger.info({ vm: ctx.vm.name, leaf: ctx.leaf, image: start.name, chain: members.map((m) => m.link.leaf) }, 'incremental image restored from its chain');
}
