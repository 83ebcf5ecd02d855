import { resolveSettings, hasObjectClass, type Attributes, type EffectiveSettings, type SettingsLevels } from '../domain/settings.js';
import { ditPaths, normalizeDn, parseDn, type DitPaths } from '../directory/ditPaths.js';
import { leafFromAttributes } from '../directory/entryMapping.js';
import type { LeafEntry, ModeChangeExtras, SiteEntry, SiteSnapshot } from '../directory/types.js';
import { BackupModes } from '../domain/modes.js';

/** What the control daemon keeps of a VM: where it runs and where its settings come from. */
export interface SiteVm {
  dn: string;
  name: string;
  node: string;
  pool: string;
}

interface Versioned {
  /** entryCSN of the state held; undefined after an optimistic update or when unreadable */
  csn: string | undefined;
}

interface HeldLeaf extends LeafEntry, Versioned {
  /** written by this daemon, the feed's echo not seen yet: late echoes of earlier modes are stale */
  optimistic: boolean;
}

/** decideBatch's order (the seed's localeCompare order) */
const vmOrder = new Intl.Collator();

const backupOrder = new Map<string, number>(BackupModes.map((m, i) => [m, i]));

/** An echo that arrives after our own later write: earlier in the backup protocol than what we hold. */
function staleEcho(held: HeldLeaf, mode: string): boolean {
  if (!held.optimistic) return false;
  const a = backupOrder.get(mode);
  const b = backupOrder.get(held.mode);
  return a !== undefined && b !== undefined && a < b;
}

/**
 * The control daemon's picture of the site, kept in memory: VMs, the
 * entries that carry backup settings or schedules, and every leaf. Filled by
 * a full read at start and on every resync, then kept current from the
 * change feed, so that scheduling, batch decisions and pruning need no
 * search. A stale picture is harmless for correctness (every write is a
 * compare-and-swap and a lost race is re-read); it only costs a retry.
 *
 * Versions: a change may arrive while a full read is on its way, so an
 * entry is replaced only by a state at least as new (entryCSN, which within
 * one provider orders its writes).
 */
export class SiteModel {
  private readonly paths: DitPaths;
  private readonly vms = new Map<string, SiteVm & Versioned>();
  private readonly settingsEntries = new Map<string, SiteEntry>();
  private readonly leaves = new Map<string, HeldLeaf>();
  private readonly byBatch = new Map<string, Set<string>>();
  private readonly byVm = new Map<string, Set<string>>();
  /** normalized leaf DNs of a batch in VM name order; dropped when the batch gains or loses a leaf */
  private readonly batchOrder = new Map<string, string[]>();
  /** effective settings per VM (lower-case name): resolved once, dropped when VM or settings change */
  private readonly settingsCache = new Map<string, EffectiveSettings | Error>();

  constructor(baseDn: string) {
    this.paths = ditPaths(baseDn);
  }

  get vmCount(): number {
    return this.vms.size;
  }

  get leafCount(): number {
    return this.leaves.size;
  }

  /** Replace everything with a full read. */
  replaceAll(site: SiteSnapshot): void {
    this.vms.clear();
    this.settingsEntries.clear();
    this.leaves.clear();
    this.byBatch.clear();
    this.byVm.clear();
    this.batchOrder.clear();
    this.settingsCache.clear();
    for (const e of site.vms) this.putVm(e);
    for (const e of site.settings) this.putSettings(e);
    for (const e of site.leaves) this.putLeaf(e);
  }

  // ---- VMs -----------------------------------------------------------------

  putVm(e: SiteEntry): void {
    const name = first(e.attributes, 'sstvirtualmachine') ?? rdnOf(e.dn, 'sstvirtualmachine');
    if (name === undefined) return;
    const key = name.toLowerCase();
    const csn = first(e.attributes, 'entrycsn');
    const held = this.vms.get(key);
    if (held && olderThan(csn, held.csn)) return;
    this.vms.set(key, { dn: e.dn, name, node: first(e.attributes, 'sstnode') ?? '', pool: first(e.attributes, 'sstvirtualmachinepool') ?? '', csn });
    this.settingsCache.delete(key);
  }

  removeVm(dn: string): void {
    const name = rdnOf(dn, 'sstvirtualmachine');
    if (name === undefined) return;
    this.vms.delete(name.toLowerCase());
    this.settingsCache.delete(name.toLowerCase());
  }

  allVms(): IterableIterator<SiteVm> {
    return this.vms.values();
  }

  vm(name: string): SiteVm | undefined {
    return this.vms.get(name.toLowerCase());
  }

  /** The node a VM runs on ('' when unknown: such VMs share one merge slot). */
  nodeOf(vm: string): string {
    return this.vms.get(vm.toLowerCase())?.node.toLowerCase() ?? '';
  }

  // ---- settings --------------------------------------------------------------

  putSettings(e: SiteEntry): void {
    const key = normalizeDn(e.dn);
    const held = this.settingsEntries.get(key);
    if (held && olderThan(first(e.attributes, 'entrycsn'), first(held.attributes, 'entrycsn'))) return;
    this.settingsEntries.set(key, e);
    // A pool's or the global entry concerns many VMs; changes are rare: start over.
    this.settingsCache.clear();
  }

  removeSettings(dn: string): void {
    this.settingsEntries.delete(normalizeDn(dn));
    this.settingsCache.clear();
  }

  /** VM → pool → global, as BackupDirectory.effectiveSettings does it, from memory. Throws on bad values. */
  settingsOf(vm: SiteVm): EffectiveSettings {
    const key = vm.name.toLowerCase();
    let s = this.settingsCache.get(key);
    if (s === undefined) {
      try {
        s = resolveSettings(this.levelsOf(vm));
      } catch (err) {
        s = err instanceof Error ? err : new Error(String(err));
      }
      this.settingsCache.set(key, s);
    }
    if (s instanceof Error) throw s;
    return s;
  }

  private levelsOf(vm: SiteVm): SettingsLevels {
    const levels: SettingsLevels = {};
    const at = (dn: string | undefined) => (dn === undefined ? undefined : this.settingsEntries.get(normalizeDn(dn)));
    let vmLevel: SiteEntry | undefined;
    let poolLevel: SiteEntry | undefined;
    try {
      vmLevel = at(this.paths.vmBackupDn(vm.name));
      poolLevel = vm.pool === '' ? undefined : at(this.paths.poolBackupDn(vm.pool));
    } catch {
      // an unsafe name has no entries of its own; the global level still applies
    }
    const globalLevel = at(this.paths.globalBackupDn);
    if (vmLevel) levels.vm = vmLevel;
    if (poolLevel) levels.pool = poolLevel;
    if (globalLevel) levels.global = globalLevel;
    return levels;
  }

  // ---- leaves ----------------------------------------------------------------

  putLeaf(e: SiteEntry): void {
    if (!hasObjectClass(e.attributes, 'sstProvisioning') && e.attributes['objectclass'] !== undefined) return;
    const leaf = leafFromAttributes(e.dn, e.attributes);
    this.setLeaf({ ...leaf, csn: first(e.attributes, 'entrycsn'), optimistic: false });
  }

  private setLeaf(l: HeldLeaf): void {
    const key = normalizeDn(l.dn);
    const held = this.leaves.get(key);
    if (held && (olderThan(l.csn, held.csn) || staleEcho(held, l.mode))) return;
    if (!held) {
      this.batchOrder.delete(l.leaf);
      index(this.byBatch, l.leaf, key);
      index(this.byVm, l.vm.toLowerCase(), key);
    }
    this.leaves.set(key, l);
  }

  removeLeaf(dn: string): void {
    const key = normalizeDn(dn);
    const held = this.leaves.get(key);
    if (!held) return;
    this.leaves.delete(key);
    this.batchOrder.delete(held.leaf);
    unindex(this.byBatch, held.leaf, key);
    unindex(this.byVm, held.vm.toLowerCase(), key);
  }

  /** A leaf this daemon just added (mode initialize), before the feed echoes it. */
  noteCreated(dn: string, vm: string, leaf: string, now: Date): void {
    if (this.leaves.has(normalizeDn(dn))) return;
    this.setLeaf({ dn, vm, leaf, mode: 'initialize', state: '', returnValue: 0, executionTime: {}, modifiedAt: now, csn: undefined, optimistic: true });
  }

  /**
   * A compare-and-swap this daemon won. Applied only if the leaf still shows
   * the mode it expected: if the feed already delivered a later state (a
   * node claimed the command before the modify's answer arrived), that one
   * stays.
   */
  noteWritten(dn: string, expected: string, next: string, extras: ModeChangeExtras, now: Date): void {
    const held = this.leaves.get(normalizeDn(dn));
    if (!held || held.mode !== expected) return;
    this.leaves.set(normalizeDn(dn), {
      ...held,
      mode: next,
      ...(extras.state !== undefined ? { state: extras.state } : {}),
      ...(extras.returnValue !== undefined ? { returnValue: extras.returnValue } : {}),
      modifiedAt: now,
      optimistic: true,
    });
  }

  /**
   * The batch's leaves in VM name order. The order is kept per batch until
   * its membership changes: decideBatch sorts again, and on sorted input
   * that costs one pass instead of a full sort of thousands of leaves on
   * every reconcile.
   */
  batch(leaf: string): LeafEntry[] {
    let order = this.batchOrder.get(leaf);
    if (!order) {
      order = this.collect(this.byBatch.get(leaf)).sort((a, b) => vmOrder.compare(a.vm, b.vm)).map((l) => normalizeDn(l.dn));
      this.batchOrder.set(leaf, order);
    }
    return this.collect(order);
  }

  /** The other leaves (other batches) of the VMs of `leaves`: what "one workflow per VM" needs. */
  otherLeavesOfVms(leaves: LeafEntry[], batch: string): LeafEntry[] {
    const out: LeafEntry[] = [];
    for (const l of leaves) {
      const keys = this.byVm.get(l.vm.toLowerCase());
      if (!keys || keys.size < 2) continue;
      for (const k of keys) {
        const other = this.leaves.get(k);
        if (other && other.leaf !== batch) out.push(other);
      }
    }
    return out;
  }

  leavesOfVm(vm: string): LeafEntry[] {
    return this.collect(this.byVm.get(vm.toLowerCase())).sort((a, b) => (a.leaf < b.leaf ? -1 : a.leaf > b.leaf ? 1 : 0));
  }

  batchNames(): string[] {
    return [...this.byBatch.keys()];
  }

  private collect(keys: Iterable<string> | undefined): LeafEntry[] {
    const out: LeafEntry[] = [];
    for (const k of keys ?? []) {
      const l = this.leaves.get(k);
      if (l) out.push(l);
    }
    return out;
  }
}

function first(a: Attributes, name: string): string | undefined {
  return a[name]?.[0];
}

function rdnOf(dn: string, attribute: string): string | undefined {
  for (const rdn of parseDn(dn)) for (const ava of rdn) if (ava.attribute.toLowerCase() === attribute) return ava.value;
  return undefined;
}

/** True when `csn` is known to be older than `held` (unknown versions never block an update). */
function olderThan(csn: string | undefined, held: string | undefined): boolean {
  return csn !== undefined && held !== undefined && csn < held;
}

function index(map: Map<string, Set<string>>, key: string, value: string): void {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  set.add(value);
}

function unindex(map: Map<string, Set<string>>, key: string, value: string): void {
  const set = map.get(key);
  if (!set) return;
  set.delete(value);
  if (set.size === 0) map.delete(key);
}
