import type { Attributes, EffectiveSettings } from '../domain/settings.js';

/** A disk of a VM as the directory describes it (sstDisk entries below ou=devices). */
export interface DiskEntry {
  dn: string;
  /** target device, e.g. vda */
  target: string;
  /** disk | cdrom | floppy */
  device: string;
  /** file | block | network */
  type: string;
  sourceFile: string | undefined;
  driverType: string | undefined;
}

export interface VmEntry {
  dn: string;
  /** sstVirtualMachine: the libvirt domain name. */
  name: string;
  node: string;
  pool: string;
  /** sstVirtualMachineType, e.g. persistent → directory vm-persistent */
  type: string;
  disks: DiskEntry[];
  attributes: Attributes;
}

/** One backup (or restore) workflow: ou=<leaf>,ou=backup,<vm>. */
export interface LeafEntry {
  dn: string;
  vm: string;
  /** the RDN value, YYYYMMDDTHHMMSSZ */
  leaf: string;
  /** sstProvisioningMode; may be anything a human or an old tool wrote */
  mode: string;
  /** sstProvisioningState: "0" or a timestamp */
  state: string;
  returnValue: number | undefined;
  /** sstProvisioningExecutionTime parsed: { snapshot: 1.2, downtime: 0.4, … } seconds */
  executionTime: Record<string, number>;
  /** modifyTimestamp of the entry as a Date, for timeouts */
  modifiedAt: Date | undefined;
}

/** An entry as the control daemon keeps it: DN and lower-cased attributes (with entryCSN when readable). */
export interface SiteEntry {
  dn: string;
  attributes: Attributes;
}

export interface SiteSnapshot {
  vms: SiteEntry[];
  /** ou=backup entries (VM, pool, global) with sstVirtualizationBackupObjectClass or sstCronObjectClass */
  settings: SiteEntry[];
  leaves: SiteEntry[];
}

/** Values written together with a mode change. */
export interface ModeChangeExtras {
  state?: string;
  returnValue?: number;
  /** merged into sstProvisioningExecutionTime (one value per key) */
  executionTime?: Record<string, number>;
}

/**
 * Everything the daemons and the CLI need from the directory. Only
 * src/directory imports ldapts; everything else speaks to this interface.
 */
export interface BackupDirectory {
  readonly baseDn: string;
  /** VMs below ou=virtual machines; with `node`, only those whose sstNode equals it. */
  listVms(filter?: { node?: string }): Promise<VmEntry[]>;
  getVm(name: string): Promise<VmEntry | undefined>;
  /** VM → pool → global lookup (domain/settings.ts resolveSettings). */
  effectiveSettings(vm: VmEntry): Promise<EffectiveSettings>;
  /**
   * Everything the control daemon keeps in memory, in three paged, indexed
   * searches: the VMs (placement only), the entries carrying backup
   * settings or schedules, and every leaf.
   */
  loadSite(): Promise<SiteSnapshot>;
  /** One entry's attributes as the control daemon keeps them (undefined when it is gone). */
  readSiteEntry(dn: string): Promise<SiteEntry | undefined>;
  /** Leaves of one VM, oldest first. */
  listLeaves(vm: string): Promise<LeafEntry[]>;
  /** Leaves of many VMs (e.g. all on one node) in as few searches as possible. */
  listLeavesOfVms(vms: string[]): Promise<LeafEntry[]>;
  getLeaf(dn: string): Promise<LeafEntry | undefined>;
  /**
   * Add ou=<leaf>,ou=backup,<vm> with mode `initialize` (creating ou=backup if
   * missing). Returns false when the leaf exists already (deterministic name:
   * a duplicate fails at the server).
   */
  createLeaf(vm: string, leaf: string): Promise<boolean>;
  /**
   * Compare-and-swap of sstProvisioningMode in one modify: delete `expected`,
   * add `next`, replace the extras. Returns false when the mode was not
   * `expected` any more (noSuchAttribute): someone else owns the step.
   */
  casMode(dn: string, expected: string, next: string, extras?: ModeChangeExtras): Promise<boolean>;
  /** Delete a leaf (and anything below it). */
  deleteLeaf(dn: string): Promise<void>;
  /** The VM's subtree as LDIF, without its ou=backup subtree. */
  exportVmLdif(vm: string): Promise<string>;
  getRestoreRequest(leafDn: string): Promise<RestoreRequest | undefined>;
  /** Create the leaf's restore request; false when one exists already (add-only: two restores cannot both start). */
  createRestoreRequest(leafDn: string, request: RestoreRequest): Promise<boolean>;
  /** Create or replace the leaf's restore request. */
  putRestoreRequest(leafDn: string, request: RestoreRequest): Promise<void>;
  deleteRestoreRequest(leafDn: string): Promise<void>;
  /**
   * Make the VM's subtree (never its ou=backup) equal to `entries`: missing
   * entries are added parent first, differing attributes replaced, entries
   * not in `entries` deleted deepest first.
   */
  writeVmSubtree(vm: string, entries: SubtreeEntry[]): Promise<void>;
  /** Set or clear sstBackupExcludeFromBackup on the VM's own ou=backup (creating it if needed). */
  setExcluded(vm: string, excluded: boolean): Promise<void>;
  close(): Promise<void>;
}

/**
 * A restore in progress, kept in `ou=restore,<leaf>` (JSON in its
 * description) so that every party — the CLI on any host, the node daemon, a
 * web UI — sees the same request, conflicts and decisions.
 */
export interface RestoreRequest {
  /** restore as a new VM of this name; absent = restore the VM itself */
  target?: string;
  /** the restore's subdirectory of retain (a UTC timestamp), set by the node */
  retain?: string;
  /** conflicts between the backup and the live VM, found by the node */
  conflicts?: unknown[];
  /** the user's decisions, written by the control side before unretainLargeFiles */
  decisions?: { prefer: 'backup' | 'live'; overrides: Record<string, 'backup' | 'live'> };
  requestedAt?: string;
}

/** One entry of a VM subtree to write back (attribute names as in LDIF). */
export interface SubtreeEntry {
  dn: string;
  attributes: Record<string, string[]>;
}

/** A change notification: only a key; the receiver re-reads the world (reconcile). */
export interface ChangeEvent {
  kind: 'leaf' | 'vm' | 'settings' | 'resync';
  dn: string;
  /**
   * The entry as this change left it (lower-case attribute names), when the
   * feed carries it (the sync feed in the control scope): the control daemon
   * then keeps its picture without reading the entry again. Absent on
   * deletes and from feeds that only name keys: read the entry.
   */
  attributes?: Attributes;
  /** True when the feed knows the entry is gone. */
  deleted?: boolean;
}

/** Delivers changes the daemon cares about. Polling now; RFC 4533 push later behind the same interface. */
export interface ChangeFeed {
  start(onChange: (e: ChangeEvent) => void): Promise<void>;
  stop(): Promise<void>;
}
