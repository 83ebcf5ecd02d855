/** sstProvisioningMode values of a backup leaf (reference: stoney-directory.md). */
export const BackupCommandModes = ['snapshot', 'merge', 'retain'] as const;
export const BackupModes = [
  'initialize', 'initialized',
  'snapshot', 'snapshotting', 'snapshotted',
  'merge', 'merging', 'merged',
  'retain', 'retaining', 'retained',
  'finished',
] as const;
export const RestoreModes = [
  'unretainSmallFiles', 'unretainingSmallFiles', 'unretainedSmallFiles',
  'unretainLargeFiles', 'unretainingLargeFiles', 'unretainedLargeFiles',
  'restore', 'restoring', 'restored',
] as const;
export const PruneModes = ['delete', 'deleting', 'deleted'] as const;

export type BackupMode = (typeof BackupModes)[number];
export type LeafMode = BackupMode | (typeof RestoreModes)[number] | (typeof PruneModes)[number];
export type NodeStep = 'snapshot' | 'merge' | 'retain' | 'unretainSmallFiles' | 'unretainLargeFiles' | 'restore' | 'delete';

const all = new Set<string>([...BackupModes, ...RestoreModes, ...PruneModes]);
export function isLeafMode(s: string): s is LeafMode {
  return all.has(s);
}

/** command → the mode a node writes to claim it → the mode it reports when done. */
export const NodeStepModes: Record<NodeStep, { command: LeafMode; working: LeafMode; done: LeafMode }> = {
  snapshot: { command: 'snapshot', working: 'snapshotting', done: 'snapshotted' },
  merge: { command: 'merge', working: 'merging', done: 'merged' },
  retain: { command: 'retain', working: 'retaining', done: 'retained' },
  unretainSmallFiles: { command: 'unretainSmallFiles', working: 'unretainingSmallFiles', done: 'unretainedSmallFiles' },
  unretainLargeFiles: { command: 'unretainLargeFiles', working: 'unretainingLargeFiles', done: 'unretainedLargeFiles' },
  restore: { command: 'restore', working: 'restoring', done: 'restored' },
  delete: { command: 'delete', working: 'deleting', done: 'deleted' },
};
