import type { LeafEntry } from './types.js';

/** Which leaves a watcher cares about: a node daemon its own VMs' leaves, the control side all. */
export interface LeafScope {
  /** Only leaves of VMs whose sstNode equals this. */
  node?: string;
}

/** A leaf plus what tells two reads of it apart. */
export interface ScannedLeaf extends LeafEntry {
  /** entryCSN (microseconds) or, without it, modifyTimestamp; undefined if neither was readable. */
  version: string | undefined;
}

/** What a polling change feed needs from the directory. */
export interface LeafScanner {
  scanLeaves(scope: LeafScope): Promise<ScannedLeaf[]>;
}
