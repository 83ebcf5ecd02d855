import { isLeafName } from './leafName.js';

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
 * remain (sstBackupNumberOfIterations). Returns leaf names, oldest first.
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
export function selectBackupsToPrune(leaves: readonly RetentionLeaf[], keep: number): string[] {
  const keepCount = Math.max(1, Math.floor(Number.isFinite(keep) ? keep : 1));
  const finished = leaves
    .filter((l) => l.mode === 'finished' && isLeafName(l.leaf))
    .sort((a, b) => (a.leaf < b.leaf ? -1 : a.leaf > b.leaf ? 1 : 0));
  const newestFinished = finished[finished.length - 1]?.leaf;
  const successful = finished.filter((l) => (l.returnValue ?? 0) === 0);
  const kept = new Set(successful.slice(-keepCount).map((l) => l.leaf));
  const newestKept = successful[successful.length - 1]?.leaf;
  if (newestKept === undefined) return [];
  const prune = new Set<string>();
  for (const l of finished) {
    if (l.leaf === newestFinished || kept.has(l.leaf)) continue;
    const failed = (l.returnValue ?? 0) !== 0;
    if (!failed || l.leaf < newestKept) prune.add(l.leaf);
  }
  return [...prune];
}

/**
 * Backup directories on disk (`<root>/<vm-type>/<pool>/<vm>/<leaf>`) that no
 * longer have a leaf to keep. Only names that are valid leaf names are
 * considered; anything else (partial copies, admin's files) is left alone.
 * `keepLeaves` must hold every leaf that still exists in the directory, not
 * only the finished ones, so a backup being written is never removed.
 * Returns names oldest first.
 */
export function selectBackupDirsToPrune(dirNames: readonly string[], keepLeaves: ReadonlySet<string>): string[] {
  return [...new Set(dirNames)].filter((n) => isLeafName(n) && !keepLeaves.has(n)).sort();
}
