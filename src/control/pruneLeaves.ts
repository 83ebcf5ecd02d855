import type { Logger } from 'pino';
import { selectBackupsToPrune } from '../domain/retention.js';
import type { BackupDirectory, LeafEntry, VmEntry } from '../directory/types.js';

/**
 * Keep sstBackupNumberOfIterations finished backups of a VM in the directory;
 * older leaves go. (The node's retain step prunes the backup directories by
 * the same number.)
 */
export async function pruneLeaves(directory: BackupDirectory, vm: VmEntry, logger: Logger): Promise<string[]> {
  const keep = (await directory.effectiveSettings(vm)).backup.numberOfIterations;
  return pruneKnownLeaves(directory, vm.name, keep, await directory.listLeaves(vm.name), logger);
}

/** The same, from the VM's leaves and iteration count as the caller holds them (the control daemon's memory). */
export async function pruneKnownLeaves(directory: BackupDirectory, vm: string, keep: number, leaves: LeafEntry[], logger: Logger): Promise<string[]> {
  const prune = new Set(selectBackupsToPrune(leaves, keep));
  for (const l of leaves) {
    if (!prune.has(l.leaf)) continue;
    await directory.deleteLeaf(l.dn);
    logger.info({ vm, leaf: l.leaf, keep }, 'pruned old backup leaf');
  }
  return [...prune];
}
