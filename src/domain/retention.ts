import { parseLeafName } from './leafName.js';

/**
 * How far ahead of this host's clock a leaf may be dated and still count as a
 * backup in time order (clock skew between hosts, a batch planned for this
 * minute). Anything later is a wrong clock or a hand-made name.
 */
export const FUTURE_LEAF_TOLERANCE_MS = 60 * 60 * 1000;

/**
 * Leaf names in time order, without names that are not leaf names and
 * without future-dated ones. A leaf dated in the future would otherwise stay
 * "the newest" for good, take a kept slot and push real backups out; it is
 * never counted and never pruned (it may hold a real backup under a wrong
 * name) — it becomes an ordinary leaf once its time has come.
 */
function datedLeavesInTimeOrder<T>(items: readonly T[], name: (t: T) => string, now: Date): T[] {
  const limit = now.getTime() + FUTURE_LEAF_TOLERANCE_MS;
  return items
    .map((item) => ({ item, at: parseLeafName(name(item))?.toMillis() }))
    .filter((x): x is { item: T; at: number } => x.at !== undefined && x.at <= limit)
    .sort((a, b) => a.at - b.at)
    .map((x) => x.item);
}

/** What retention needs to know about one backup leaf under ou=backup. */
export interface RetentionLeaf {
  /** The leaf's ou value, `YYYYMMDDTHHMMSSZ`. */
  leaf: string;
  /** sstProvisioningMode. */
  mode: string;
  /** sstProvisioningReturnValue; absent counts as success. */
  returnValue?: number;
}

/**
 * Which leaves to prune so that at most `keep` finished, successful backups
 * remain (sstBackupNumberOfIterations). Returns leaf names, oldest first,
 * ordered by the leaves' time; a leaf dated more than
 * FUTURE_LEAF_TOLERANCE_MS after `now` is left alone and not counted.
 *
 * - Only leaves in mode `finished` are ever pruned; anything else (a backup or
 *   restore in progress, a prune already under way) is left alone.
 * - The newest `keep` successful finished leaves stay (at least one, whatever
 *   `keep` says); older successful ones go.
 * - Failed finished leaves (return value ≠ 0) older than the newest kept
 *   successful one go too; newer ones stay, they tell of the latest failure.
 *   Without any successful backup, nothing is pruned.
 * - The newest finished leaf is never pruned.
 * - Names that are not leaf names are never considered.
 */
export function selectBackupsToPrune(leaves: readonly RetentionLeaf[], keep: number, now: Date = new Date()): string[] {
  const keepCount = keepCountOf(keep);
  const finished = datedLeavesInTimeOrder(leaves.filter((l) => l.mode === 'finished'), (l) => l.leaf, now);
  const newestFinished = finished[finished.length - 1]?.leaf;
  const successful = finished.filter((l) => (l.returnValue ?? 0) === 0);
  const kept = new Set(successful.slice(-keepCount).map((l) => l.leaf));
  const newestKept = successful[successful.length - 1];
  if (newestKept === undefined) return [];
  const newestKeptIndex = finished.indexOf(newestKept);
  const prune = new Set<string>();
  finished.forEach((l, i) => {
    if (l.leaf === newestFinished || kept.has(l.leaf)) return;
    const failed = (l.returnValue ?? 0) !== 0;
    if (!failed || i < newestKeptIndex) prune.add(l.leaf);
  });
  return [...prune];
}

function keepCountOf(keep: number): number {
  return Math.max(1, Math.floor(Number.isFinite(keep) ? keep : 1));
}

/**
 * Complete backup directories on disk (`<root>/<vm-type>/<pool>/<vm>/<leaf>`)
 * to remove so that the newest `keep` (at least one) remain, by leaf time.
 * `protect` (the backup being written, backups a restore reads) is never
 * removed; names that are not leaf names and future-dated ones are never
 * considered (see datedLeavesInTimeOrder). Returns names oldest first.
 */
export function selectBackupDirsToPrune(completeDirs: readonly string[], keep: number, protect: ReadonlySet<string>, now: Date = new Date()): string[] {
  const dated = datedLeavesInTimeOrder([...new Set(completeDirs)], (n) => n, now);
  const kept = new Set(dated.slice(-keepCountOf(keep)));
  return dated.filter((n) => !kept.has(n) && !protect.has(n));
}
