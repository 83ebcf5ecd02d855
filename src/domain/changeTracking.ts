import { isLeafName } from './leafName.js';

/**
 * Change tracking for incremental backups by dirty bitmaps. Before each live
 * snapshot the node creates a libvirt checkpoint named after the leaf: a
 * persistent bitmap in every backed-up qcow2 disk that records each write
 * from then on. libvirt carries it into the snapshot's overlays and merges
 * it back when the merge commits them, so at the next backup the frozen
 * image holds a bitmap of everything written since the previous backup's
 * moment — a superset (it starts a little before that moment), never less.
 * Only the marked clusters are then read and stored.
 *
 * The bitmap is used only when it can be trusted; otherwise changes are
 * found by comparing contents (always right, reads the whole disk).
 */

const PREFIX = 'stoney-';

/** The checkpoint (and bitmap) name of the backup `leaf`. */
export function checkpointName(leaf: string): string {
  return `${PREFIX}${leaf}`;
}

/** The leaf a checkpoint of this project stands for, or undefined for a foreign one. */
export function leafOfCheckpoint(name: string): string | undefined {
  if (!name.startsWith(PREFIX)) return undefined;
  const leaf = name.slice(PREFIX.length);
  return isLeafName(leaf) ? leaf : undefined;
}

export interface BitmapFacts {
  name: string;
  flags: readonly string[];
}

export type TrackedChanges = { use: 'bitmap'; bitmap: string } | { use: 'comparison'; why: string };

/**
 * Whether the frozen image's bitmap of the base backup can stand for "what
 * changed since then": it must exist, be recording (`auto`), have been
 * stored cleanly (not `in-use`, which a crash leaves), and libvirt must
 * still know the checkpoint it belongs to (a restore or a redefinition
 * drops checkpoints; a bitmap outliving its checkpoint is not ours to trust).
 */
export function trackedChanges(a: { baseLeaf: string; bitmaps: readonly BitmapFacts[]; checkpoints: readonly string[]; dataFile?: string | undefined }): TrackedChanges {
  const name = checkpointName(a.baseLeaf);
  if (a.dataFile !== undefined) return { use: 'comparison', why: 'the image keeps its data in an external file' };
  if (!a.checkpoints.includes(name)) return { use: 'comparison', why: `libvirt has no checkpoint ${name}` };
  const bitmap = a.bitmaps.find((b) => b.name === name);
  if (bitmap === undefined) return { use: 'comparison', why: `the image has no bitmap ${name}` };
  if (bitmap.flags.includes('in-use')) return { use: 'comparison', why: `bitmap ${name} was not stored cleanly (in-use)` };
  if (!bitmap.flags.includes('auto')) return { use: 'comparison', why: `bitmap ${name} is not recording` };
  return { use: 'bitmap', bitmap: name };
}

/**
 * Checkpoints of this project to delete once the backup `keepLeaf` is
 * finished: every older one (its bitmap would only grow) — oldest first,
 * so libvirt never has to merge one into a parent. Newer ones (a backup
 * planned later that already took its snapshot) and foreign ones stay.
 */
export function checkpointsToDrop(names: readonly string[], keepLeaf: string): string[] {
  return names.filter((n) => {
    const leaf = leafOfCheckpoint(n);
    return leaf !== undefined && leaf < keepLeaf;
  }).sort();
}
