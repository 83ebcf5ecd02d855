import path from 'node:path';
import { listRegularFiles } from './safeFs.js';
import { readManifestFile } from './backupIterations.js';
import { chainMembers } from './materializeChain.js';
import { loadRestoreWork } from './restoreWork.js';
import { exists } from './durableFs.js';
import { allocatedBytes, requireFreeSpace } from './freeSpace.js';
import type { StepContext } from './StepContext.js';

/**
 * unretainLargeFiles copies the backup's state file and disk images into the
 * restore's directory in retain — the images' filesystem. Room for all of it
 * is checked before the first byte (47, 48 when statfs fails): a disk full
 * halfway would pause every VM of the node. The copies are sparse, so a
 * file counts with its allocated bytes; an incremental image counts twice
 * its chain's (each member is copied, then converted into one whole image).
 *
 * Only the space is judged here: a backup this cannot read (missing,
 * symlinked, no manifest) is left to the step, which refuses it with its own code.
 */
export async function requireRoomToUnretain(ctx: StepContext): Promise<void> {
  const bytes = await bytesToUnretain(ctx).catch(() => undefined);
  if (bytes === undefined) return;
  const { work } = await loadRestoreWork(ctx);
  await requireFreeSpace(work.retainDir, bytes, `the state file and disk images of backup ${ctx.leaf} of ${ctx.vm.name}`);
}

async function bytesToUnretain(ctx: StepContext): Promise<number> {
  const { layout } = ctx;
  const suffix = `.${layout.leaf}`;
  const small = new Set([layout.xmlFileName, layout.ldifFileName].map((n) => `${n}${suffix}`));
  const names = (await listRegularFiles(layout.backupDir)).filter((n) => n.endsWith(suffix) && !small.has(n));
  const manifest = (await exists(layout.manifestPath)) ? await readManifestFile(layout.manifestPath, layout.leaf) : undefined;
  let total = 0;
  for (const name of names) {
    const listed = manifest?.files.find((f) => f.name === name);
    if (listed?.backing) {
      for (const m of await chainMembers(ctx, { leaf: layout.leaf, name })) total += 2 * (await allocatedBytes(m.path));
    } else {
      total += await allocatedBytes(path.join(layout.backupDir, name));
    }
  }
  return total;
}
