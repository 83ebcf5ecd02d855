import { isLeafName } from './leafName.js';
import { isSafeName } from './names.js';

/**
 * Incremental backups as chains of qcow2 images inside one VM's backup
 * directory: an incremental image holds only the clusters that differ from
 * the previous iteration's image of the same disk, and names that image as
 * its backing file by a relative path (`../<leaf>/<file>.<leaf>`), so
 * `qemu-img convert` of any kept image gives that moment's whole disk.
 *
 * What differs is found by comparing contents (qemu-img rebase in safe mode
 * against the previous chain), not by a change tracker: an incremental image
 * is right by construction whatever happened to the VM in between (restore,
 * move to another node, a crash). Tracking that could be wrong therefore
 * never makes a backup wrong; what forces a full backup is listed in
 * planImageBase.
 */

/** The image an incremental image depends on: file `name` of iteration `leaf`. */
export interface ChainLink {
  leaf: string;
  name: string;
}

/** One image file of a finished iteration, as its manifest records it. */
export interface IterationImage {
  name: string;
  size: number;
  /** guest-visible size in bytes; absent in manifests written before incremental backups */
  virtualSize?: number;
  /** the format the file is stored in (an incremental image can only build on a qcow2 one) */
  format?: string;
  backing?: ChainLink;
  /** on disk with the size the manifest records (checked by the caller) */
  intact: boolean;
}

export interface Iteration {
  leaf: string;
  images: IterationImage[];
}

export type ImageBasePlan =
  | { kind: 'full'; reason: string }
  | { kind: 'incremental'; base: ChainLink; depth: number; reason: string };

export interface ImagePlanInput {
  /** `<file>.<leaf>` name the image gets in the backup being written */
  fileName: string;
  /** plain image file name, e.g. `disk.qcow2`: an iteration holds `<file>.<leaf>` */
  imageFileName: string;
  leaf: string;
  fullEvery: number;
  source: { format: string; hasBacking: boolean; virtualSize: number };
  /** finished iterations of the VM (any order; the one being written is ignored) */
  iterations: readonly Iteration[];
}

/** Name of a disk image in the iteration `leaf`. */
export function iterationFileName(imageFileName: string, leaf: string): string {
  return `${imageFileName}.${leaf}`;
}

/** The backing-file string an incremental image's header carries: relative to its own directory. */
export function relativeBackingPath(link: ChainLink): string {
  return `../${link.leaf}/${link.name}`;
}

/** Whether this image is stored whole or as the difference to the previous iteration, and why. */
export function planImageBase(input: ImagePlanInput): ImageBasePlan {
  const { leaf, fullEvery, source } = input;
  if (fullEvery <= 1) return { kind: 'full', reason: 'sstBackupFullEvery is 1: every backup is full' };
  if (source.format !== 'qcow2') return { kind: 'full', reason: `${source.format} disk image: stored whole every time` };
  if (source.hasBacking) return { kind: 'full', reason: 'linked clone (the image has a backing file): stored whole every time' };
  const previous = [...input.iterations].filter((i) => i.leaf < leaf).sort((a, b) => (a.leaf < b.leaf ? -1 : 1)).pop();
  if (previous === undefined) return { kind: 'full', reason: 'no earlier finished backup of the VM' };
  const prevName = iterationFileName(input.imageFileName, previous.leaf);
  const prev = previous.images.find((f) => f.name === prevName);
  if (prev === undefined) return { kind: 'full', reason: `the disk is not in the previous backup ${previous.leaf}` };
  if (prev.format !== undefined && prev.format !== 'qcow2') return { kind: 'full', reason: `the previous backup ${previous.leaf} stored the disk as ${prev.format}` };
  if (prev.virtualSize === undefined) return { kind: 'full', reason: `the previous backup ${previous.leaf} records no disk size (written before incremental backups)` };
  if (prev.virtualSize !== source.virtualSize) {
    return { kind: 'full', reason: `the disk was resized since ${previous.leaf} (${prev.virtualSize} → ${source.virtualSize} bytes)` };
  }
  const chain = walkChain(input.iterations, { leaf: previous.leaf, name: prevName });
  if (!chain.ok) return { kind: 'full', reason: `the previous backup's chain is broken: ${chain.problem}` };
  const depth = chain.links.length; // incremental images from the last full one up to the previous backup
  if (depth + 1 >= fullEvery) {
    return { kind: 'full', reason: `every ${fullEvery}th backup is full (sstBackupFullEvery); ${depth} incremental since the last full one` };
  }
  return { kind: 'incremental', base: { leaf: previous.leaf, name: prevName }, depth: depth + 1, reason: `changes since ${previous.leaf}` };
}

export type ChainWalk = { ok: true; root: ChainLink; links: ChainLink[] } | { ok: false; problem: string };

/**
 * Follow an image's backing links down to its full image. `links` are the
 * incremental images from `start` down (start first), `root` the full one.
 * Fails on a missing or damaged member, a link to a later iteration or a
 * loop — a chain only ever points back in time.
 */
export function walkChain(iterations: readonly Iteration[], start: ChainLink): ChainWalk {
  const byLeaf = new Map(iterations.map((i) => [i.leaf, i]));
  const links: ChainLink[] = [];
  let at = start;
  for (let guard = 0; guard <= iterations.length; guard += 1) {
    const image = byLeaf.get(at.leaf)?.images.find((f) => f.name === at.name);
    if (image === undefined) return { ok: false, problem: `${at.leaf}/${at.name} is not in a finished backup` };
    if (!image.intact) return { ok: false, problem: `${at.leaf}/${at.name} is missing or not the size its manifest records` };
    if (image.backing === undefined) return { ok: true, root: at, links };
    if (!(image.backing.leaf < at.leaf)) return { ok: false, problem: `${at.leaf}/${at.name} names a backing file of a later backup (${image.backing.leaf})` };
    links.push(at);
    at = image.backing;
  }
  return { ok: false, problem: `the chain of ${start.leaf}/${start.name} loops` };
}

/** An incremental image that must absorb its backing image before that image's iteration is removed. */
export interface Fold {
  child: ChainLink;
  parent: ChainLink;
}

/**
 * What removing iteration `leaf` requires: each image of a kept iteration
 * that names one of its images as backing folds that image in first.
 * `blocked` lists images two kept iterations depend on (one fold moves the
 * file; the second would need a copy): the iteration is kept until that
 * resolves (it never arises from the backup path, which always builds on the
 * newest finished backup).
 */
export function foldsForRemoval(iterations: readonly Iteration[], leaf: string): { folds: Fold[]; blocked: ChainLink[] } {
  const dependents = new Map<string, ChainLink[]>();
  for (const it of iterations) {
    if (it.leaf === leaf) continue;
    for (const f of it.images) {
      if (f.backing?.leaf !== leaf) continue;
      const list = dependents.get(f.backing.name) ?? [];
      list.push({ leaf: it.leaf, name: f.name });
      dependents.set(f.backing.name, list);
    }
  }
  const folds: Fold[] = [];
  const blocked: ChainLink[] = [];
  for (const [name, children] of dependents) {
    if (children.length > 1) blocked.push({ leaf, name });
    else if (children[0] !== undefined) folds.push({ child: children[0], parent: { leaf, name } });
  }
  return { folds, blocked };
}

/** Untrusted JSON (a manifest in a group-writable directory) → a link, or undefined when it is not one. */
export function parseChainLink(v: unknown): ChainLink | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const { leaf, name } = v as Record<string, unknown>;
  if (typeof leaf !== 'string' || typeof name !== 'string' || !isLeafName(leaf) || !isSafeName(name) || !name.endsWith(`.${leaf}`)) return undefined;
  return { leaf, name };
}
