import {
  AlreadyExistsError, AndFilter, Attribute, Change, EqualityFilter, NoSuchAttributeError,
  NoSuchObjectError, OrFilter, type Entry, type Filter,
} from 'ldapts';
import { assertSafeName } from '../domain/names.js';
import { parseRestoreRequest } from '../domain/restore/restoreRequest.js';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { formatLeafName } from '../domain/leafName.js';
import { resolveSettings, hasObjectClass, type EffectiveSettings, type SettingsLevels } from '../domain/settings.js';
import type { BackupDirectory, DiskEntry, LeafEntry, ModeChangeExtras, RestoreRequest, SiteEntry, SiteSnapshot, SubtreeEntry, VmEntry } from './types.js';
import type { LeafScanner, LeafScope, ScannedLeaf } from './leafScan.js';
import { DirectoryError } from './DirectoryError.js';
import type { LdapSession } from './LdapSession.js';
import { ditPaths, dnDepth, isAtOrBelow, normalizeDn, rdnValue, type DitPaths } from './ditPaths.js';
import {
  diskFromEntry, formatExecutionTime, leafAttributes, leafFromEntry, parseExecutionTime, sortLeaves, toAttributes,
  vmFromEntry,
} from './entryMapping.js';
import { entriesToLdif } from './ldif.js';

const VM_CLASS = 'sstVirtualizationVirtualMachine';
const DISK_CLASS = 'sstVirtualizationVirtualMachineDisk';
const LEAF_CLASS = 'sstProvisioning';
const BACKUP_CLASS = 'sstVirtualizationBackupObjectClass';

const CRON_CLASS = 'sstCronObjectClass';

/** Up to this many VMs, their leaves are read VM by VM; above, in one search of all leaves. */
const FEW_VMS = 8;

/** What the control daemon keeps of a VM: its name and placement. */
const siteVmAttributes = ['objectClass', 'sstVirtualMachine', 'sstNode', 'sstVirtualMachinePool', 'sstVirtualMachineType', 'entryCSN'];

function eq(attribute: string, value: string): Filter {
  return new EqualityFilter({ attribute, value });
}

function and(...filters: Filter[]): Filter {
  return filters.length === 1 && filters[0] ? filters[0] : new AndFilter({ filters });
}

/**
 * BackupDirectory on OpenLDAP through ldapts: the stoney cloud DIT
 * (reference: stoney-directory.md), compare-and-swap mode changes, LDIF
 * export of a VM's subtree.
 */
export class LdapBackupDirectory implements BackupDirectory, LeafScanner {
  readonly paths: DitPaths;

  constructor(
    private readonly session: LdapSession,
    readonly baseDn: string,
  ) {
    this.paths = ditPaths(baseDn);
  }

  // ---- reading -----------------------------------------------------------

  /** Search that treats a missing base as "nothing there". */
  private async find(base: string, scope: 'base' | 'one' | 'sub', filter: Filter | string, attributes?: string[]): Promise<Entry[]> {
    try {
      return await this.session.search(base, { scope, filter, ...(attributes ? { attributes } : {}) });
    } catch (err) {
      if (err instanceof NoSuchObjectError) return [];
      throw DirectoryError.from(err, `search ${base}`, false);
    }
  }

  private async readEntry(dn: string, attributes: string[] = ['*']): Promise<Entry | undefined> {
    return (await this.find(dn, 'base', '(objectClass=*)', attributes))[0];
  }

  async listVms(filter: { node?: string } = {}): Promise<VmEntry[]> {
    const { vmsDn } = this.paths;
    if (filter.node === undefined) {
      const entries = await this.find(vmsDn, 'sub', new OrFilter({ filters: [eq('objectClass', VM_CLASS), eq('objectClass', DISK_CLASS)] }));
      const vms = entries.filter((e) => hasObjectClass(toAttributes(e), VM_CLASS));
      const disks = entries.filter((e) => hasObjectClass(toAttributes(e), DISK_CLASS));
      return this.assemble(vms, disks);
    }
    const node = assertSafeName('node', filter.node);
    const vms = await this.find(vmsDn, 'one', and(eq('objectClass', VM_CLASS), eq('sstNode', node)));
    const names = vms.map((e) => rdnValue(e.dn, 'sstVirtualMachine')).filter((n): n is string => n !== undefined);
    const disks = await this.belowVms(names, (name) => this.paths.vmDn(name), 'sub', DISK_CLASS, ['*']);
    return this.assemble(vms, disks);
  }

  private assemble(vmEntries: Entry[], diskEntries: Entry[]): VmEntry[] {
    const disksByVm = new Map<string, DiskEntry[]>();
    for (const d of diskEntries) {
      const vm = rdnValue(d.dn, 'sstVirtualMachine')?.toLowerCase();
      if (vm === undefined) continue;
      disksByVm.set(vm, [...(disksByVm.get(vm) ?? []), diskFromEntry(d)]);
    }
    return vmEntries
      .map((e) => vmFromEntry(e, disksByVm.get((rdnValue(e.dn, 'sstVirtualMachine') ?? '').toLowerCase()) ?? []))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  async getVm(name: string): Promise<VmEntry | undefined> {
    const dn = this.paths.vmDn(name);
    const vm = await this.readEntry(dn);
    if (!vm || !hasObjectClass(toAttributes(vm), VM_CLASS)) return undefined;
    const disks = await this.find(dn, 'sub', eq('objectClass', DISK_CLASS));
    return this.assemble([vm], disks)[0];
  }

  async effectiveSettings(vm: VmEntry): Promise<EffectiveSettings> {
    const level = async (dn: string | undefined) => {
      if (dn === undefined) return undefined;
      const e = await this.readEntry(dn);
      return e ? { dn: e.dn, attributes: toAttributes(e) } : undefined;
    };
    const [vmLevel, poolLevel, globalLevel] = await Promise.all([
      level(this.paths.vmBackupDn(vm.name)),
      level(vm.pool === '' ? undefined : this.paths.poolBackupDn(vm.pool)),
      level(this.paths.globalBackupDn),
    ]);
    const levels: SettingsLevels = {};
    if (vmLevel) levels.vm = vmLevel;
    if (poolLevel) levels.pool = poolLevel;
    if (globalLevel) levels.global = globalLevel;
    return resolveSettings(levels);
  }

  async loadSite(): Promise<SiteSnapshot> {
    const { vmsDn, serviceDn } = this.paths;
    // One after the other: the session serializes paged searches anyway.
    const vms = await this.find(vmsDn, 'one', eq('objectClass', VM_CLASS), siteVmAttributes);
    const settings = await this.find(serviceDn, 'sub', new OrFilter({ filters: [eq('objectClass', BACKUP_CLASS), eq('objectClass', CRON_CLASS)] }), ['*', 'entryCSN']);
    const leaves = await this.find(vmsDn, 'sub', eq('objectClass', LEAF_CLASS), leafAttributes);
    const site = (e: Entry): SiteEntry => ({ dn: e.dn, attributes: toAttributes(e) });
    return { vms: vms.map(site), settings: settings.map(site), leaves: leaves.map(site) };
  }

  async readSiteEntry(dn: string): Promise<SiteEntry | undefined> {
    const e = await this.readEntry(dn, ['*', 'entryCSN', 'modifyTimestamp']);
    return e ? { dn: e.dn, attributes: toAttributes(e) } : undefined;
  }

  async listLeaves(vm: string): Promise<LeafEntry[]> {
    const entries = await this.find(this.paths.vmBackupDn(vm), 'one', eq('objectClass', LEAF_CLASS), leafAttributes);
    return sortLeaves(entries.map(leafFromEntry));
  }

  async listLeavesOfVms(vms: string[]): Promise<LeafEntry[]> {
    return sortLeaves(await this.leafEntriesOfVms(vms).then((es) => es.map(leafFromEntry)));
  }

  /**
   * Leaves of the given VMs by indexed searches only: a DN-matching filter
   * per VM ((sstVirtualMachine:dn:=…)) cannot use an index and made slapd
   * test every leaf against every term. A few VMs: one one-level search
   * below each VM's ou=backup (parent index). Many: one subtree search for
   * all leaves (objectClass index), kept if their VM is wanted.
   */
  private async leafEntriesOfVms(vms: string[]): Promise<Entry[]> {
    const entries = await this.belowVms(vms, (name) => this.paths.vmBackupDn(name), 'one', LEAF_CLASS, leafAttributes);
    // Keep only leaves directly in ou=backup (a leaf-shaped entry deeper down is not one).
    return entries.filter((e) => dnDepth(e.dn) === dnDepth(this.paths.vmsDn) + 3);
  }

  /**
   * Entries of `objectClass` below the given VMs, by indexed searches only: a
   * DN-matching filter per VM ((sstVirtualMachine:dn:=…)) cannot use an
   * index and made slapd test every entry against every term. A few VMs: one
   * search below each (parent index); many: one search of the whole VM
   * subtree (objectClass index), kept if their VM is wanted.
   */
  private async belowVms(vms: string[], baseOf: (vm: string) => string, scope: 'one' | 'sub', objectClass: string, attributes: string[]): Promise<Entry[]> {
    const wanted = new Map<string, string | undefined>();
    for (const v of vms) {
      // A name unfit for a DN we build is still wanted: its entries are found by the subtree search,
      // and whoever uses them reports the bad name (a node daemon: code 52), instead of never seeing them.
      let base: string | undefined;
      try {
        base = baseOf(v);
      } catch {
        base = undefined;
      }
      wanted.set(v.toLowerCase(), base);
    }
    if (wanted.size === 0) return [];
    const bases = [...wanted.values()];
    if (bases.length <= FEW_VMS && bases.every((b) => b !== undefined)) {
      return (await Promise.all(bases.map((dn) => this.find(dn as string, scope, eq('objectClass', objectClass), attributes)))).flat();
    }
    const all = await this.find(this.paths.vmsDn, 'sub', eq('objectClass', objectClass), attributes);
    return all.filter((e) => wanted.has((rdnValue(e.dn, 'sstVirtualMachine') ?? '').toLowerCase()));
  }

  async getLeaf(dn: string): Promise<LeafEntry | undefined> {
    const e = await this.readEntry(dn, leafAttributes);
    if (!e || !hasObjectClass(toAttributes(e), LEAF_CLASS)) return undefined;
    return leafFromEntry(e);
  }

  async scanLeaves(scope: LeafScope): Promise<ScannedLeaf[]> {
    let entries: Entry[];
    if (scope.node === undefined) {
      entries = await this.find(this.paths.vmsDn, 'sub', eq('objectClass', LEAF_CLASS), leafAttributes);
    } else {
      const node = assertSafeName('node', scope.node);
      const vms = await this.find(this.paths.vmsDn, 'one', and(eq('objectClass', VM_CLASS), eq('sstNode', node)), ['sstVirtualMachine']);
      const names = vms.map((e) => rdnValue(e.dn, 'sstVirtualMachine')).filter((n): n is string => n !== undefined);
      entries = await this.leafEntriesOfVms(names);
    }
    return entries.map((e) => {
      const a = toAttributes(e);
      return { ...leafFromEntry(e), version: a['entrycsn']?.[0] ?? a['modifytimestamp']?.[0] };
    });
  }

  // ---- writing -----------------------------------------------------------

  private async ensureBackupContainer(vm: string): Promise<void> {
    const dn = this.paths.vmBackupDn(vm);
    try {
      await this.session.add(dn, { objectClass: ['top', 'organizationalUnit'], ou: 'backup' });
    } catch (err) {
      if (err instanceof AlreadyExistsError) return;
      if (err instanceof NoSuchObjectError) {
        throw new BackupError(`VM ${vm} is not in the directory (${this.paths.vmDn(vm)})`, ReturnCode.cannotFindMachine, { cause: err });
      }
      throw DirectoryError.from(err, `add ${dn}`, true);
    }
  }

  async createLeaf(vm: string, leaf: string, now: Date = new Date()): Promise<boolean> {
    const dn = this.paths.leafDn(vm, leaf);
    const add = () => this.session.add(dn, {
      objectClass: ['top', 'organizationalUnit', LEAF_CLASS],
      ou: leaf,
      sstProvisioningMode: 'initialize',
      sstProvisioningState: formatLeafName(now),
      sstProvisioningExecutionDate: '0',
      sstProvisioningReturnValue: '0',
    });
    try {
      // The leaf first: ou=backup exists for every VM backed up before, so one write is the rule.
      try {
        await add();
      } catch (err) {
        if (!(err instanceof NoSuchObjectError)) throw err;
        await this.ensureBackupContainer(vm);
        await add();
      }
      return true;
    } catch (err) {
      if (err instanceof AlreadyExistsError) return false;
      throw DirectoryError.from(err, `add ${dn}`, true);
    }
  }

  async casMode(dn: string, expected: string, next: string, extras: ModeChangeExtras = {}): Promise<boolean> {
    const changes: Change[] = [
      new Change({ operation: 'delete', modification: new Attribute({ type: 'sstProvisioningMode', values: [expected] }) }),
      new Change({ operation: 'add', modification: new Attribute({ type: 'sstProvisioningMode', values: [next] }) }),
    ];
    if (extras.state !== undefined) {
      changes.push(new Change({ operation: 'replace', modification: new Attribute({ type: 'sstProvisioningState', values: [extras.state] }) }));
    }
    if (extras.returnValue !== undefined) {
      if (!Number.isInteger(extras.returnValue)) throw new BackupError(`return value ${extras.returnValue} is not an integer`);
      changes.push(new Change({
        operation: 'replace',
        modification: new Attribute({ type: 'sstProvisioningReturnValue', values: [String(extras.returnValue)] }),
      }));
    }
    if (extras.executionTime !== undefined && Object.keys(extras.executionTime).length > 0) {
      // Merge with what is there now; the mode delete above still guards the whole modify.
      const current = await this.readEntry(dn, ['sstProvisioningExecutionTime', 'sstProvisioningMode']);
      if (!current) throw new DirectoryError(`compare-and-swap ${expected} → ${next}: leaf ${dn} does not exist`, ReturnCode.cannotSaveBackendEntry, 32);
      const merged = { ...parseExecutionTime(toAttributes(current)['sstprovisioningexecutiontime']), ...extras.executionTime };
      changes.push(new Change({
        operation: 'replace',
        modification: new Attribute({ type: 'sstProvisioningExecutionTime', values: formatExecutionTime(merged) }),
      }));
    }
    try {
      await this.session.modify(dn, changes);
      return true;
    } catch (err) {
      if (err instanceof NoSuchAttributeError) return false;
      throw DirectoryError.from(err, `compare-and-swap ${expected} → ${next} on ${dn}`, true);
    }
  }

  async deleteLeaf(dn: string): Promise<void> {
    const leaf = await this.readEntry(dn, ['objectClass']);
    if (!leaf) return;
    if (!hasObjectClass(toAttributes(leaf), LEAF_CLASS)) {
      throw new BackupError(`${dn} is not a backup leaf (no objectClass ${LEAF_CLASS}); not deleting it`, ReturnCode.wrongStateInformation);
    }
    await this.deleteSubtree(dn);
  }

  /** Deletes dn and everything below it, deepest first. */
  async deleteSubtree(dn: string): Promise<void> {
    const entries = await this.find(dn, 'sub', '(objectClass=*)', ['1.1']);
    entries.sort((a, b) => dnDepth(b.dn) - dnDepth(a.dn));
    for (const e of entries) {
      try {
        await this.session.del(e.dn);
      } catch (err) {
        if (err instanceof NoSuchObjectError) continue;
        throw DirectoryError.from(err, `delete ${e.dn}`, true);
      }
    }
  }

  async exportVmLdif(vm: string): Promise<string> {
    const vmDn = this.paths.vmDn(vm);
    const backupDn = this.paths.vmBackupDn(vm);
    const entries = (await this.find(vmDn, 'sub', '(objectClass=*)', ['*'])).filter((e) => !isAtOrBelow(e.dn, backupDn));
    if (entries.length === 0) throw new BackupError(`VM ${vm} is not in the directory (${vmDn})`, ReturnCode.cannotFindMachine);
    // Parent first; among siblings by DN, so the output is stable.
    entries.sort((a, b) => dnDepth(a.dn) - dnDepth(b.dn) || a.dn.localeCompare(b.dn));
    return entriesToLdif(entries);
  }

  async setExcluded(vm: string, excluded: boolean): Promise<void> {
    const dn = this.paths.vmBackupDn(vm);
    // Clearing removes the VM's own flag; if the pool or the site still
    // excludes the VM, an explicit FALSE makes the VM's own wish win.
    const desired = excluded ? ['TRUE'] : (await this.inheritsExclusion(vm)) ? ['FALSE'] : [];
    let existing = await this.readEntry(dn, ['objectClass', 'sstBackupExcludeFromBackup']);
    if (!existing) {
      if (desired.length === 0) return;
      try {
        await this.session.add(dn, { objectClass: ['top', 'organizationalUnit', BACKUP_CLASS], ou: 'backup', sstBackupExcludeFromBackup: desired });
        return;
      } catch (err) {
        if (err instanceof NoSuchObjectError) {
          throw new BackupError(`VM ${vm} is not in the directory (${this.paths.vmDn(vm)})`, ReturnCode.cannotFindMachine, { cause: err });
        }
        if (!(err instanceof AlreadyExistsError)) throw DirectoryError.from(err, `add ${dn}`, true);
        existing = await this.readEntry(dn, ['objectClass', 'sstBackupExcludeFromBackup']);
        if (!existing) throw DirectoryError.from(err, `add ${dn}`, true);
      }
    }
    const a = toAttributes(existing);
    const changes: Change[] = [];
    if (desired.length > 0 && !hasObjectClass(a, BACKUP_CLASS)) {
      changes.push(new Change({ operation: 'add', modification: new Attribute({ type: 'objectClass', values: [BACKUP_CLASS] }) }));
    }
    if (desired.length > 0 || a['sstbackupexcludefrombackup'] !== undefined) {
      changes.push(new Change({ operation: 'replace', modification: new Attribute({ type: 'sstBackupExcludeFromBackup', values: desired }) }));
    }
    if (changes.length === 0) return;
    try {
      await this.session.modify(dn, changes);
    } catch (err) {
      throw DirectoryError.from(err, `modify ${dn}`, true);
    }
  }

  /** Whether the pool or global level excludes the VM (ignoring the VM's own entry). */
  private async inheritsExclusion(vm: string): Promise<boolean> {
    const entry = await this.getVm(vm);
    if (!entry) throw new BackupError(`VM ${vm} is not in the directory`, ReturnCode.cannotFindMachine);
    const levels: SettingsLevels = {};
    for (const [key, dn] of [['pool', entry.pool === '' ? undefined : this.paths.poolBackupDn(entry.pool)], ['global', this.paths.globalBackupDn]] as const) {
      if (dn === undefined) continue;
      const e = await this.readEntry(dn);
      if (e) levels[key] = { dn: e.dn, attributes: toAttributes(e) };
    }
    return resolveSettings(levels).excluded;
  }

  // ---- restore -----------------------------------------------------------

  private restoreDn(leafDn: string): string {
    return `ou=restore,${leafDn}`;
  }

  async getRestoreRequest(leafDn: string): Promise<RestoreRequest | undefined> {
    const e = await this.readEntry(this.restoreDn(leafDn), ['description']);
    const json = e ? toAttributes(e)['description']?.[0] : undefined;
    if (json === undefined) return undefined;
    return parseRestoreRequest(json, this.restoreDn(leafDn));
  }

  async createRestoreRequest(leafDn: string, request: RestoreRequest): Promise<boolean> {
    const dn = this.restoreDn(leafDn);
    try {
      await this.session.add(dn, { objectClass: ['top', 'organizationalUnit'], ou: 'restore', description: JSON.stringify(request) });
      return true;
    } catch (err) {
      if (err instanceof AlreadyExistsError) return false;
      throw DirectoryError.from(err, `add ${dn}`, true);
    }
  }

  async putRestoreRequest(leafDn: string, request: RestoreRequest): Promise<void> {
    const dn = this.restoreDn(leafDn);
    const value = JSON.stringify(request);
    try {
      await this.session.add(dn, { objectClass: ['top', 'organizationalUnit'], ou: 'restore', description: value });
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw DirectoryError.from(err, `add ${dn}`, true);
      try {
        await this.session.modify(dn, [new Change({ operation: 'replace', modification: new Attribute({ type: 'description', values: [value] }) })]);
      } catch (err2) {
        throw DirectoryError.from(err2, `modify ${dn}`, true);
      }
    }
  }

  async deleteRestoreRequest(leafDn: string): Promise<void> {
    await this.deleteSubtree(this.restoreDn(leafDn));
  }

  async writeVmSubtree(vm: string, entries: SubtreeEntry[]): Promise<void> {
    const vmDn = this.paths.vmDn(vm);
    const backupDn = this.paths.vmBackupDn(vm);
    for (const e of entries) {
      if (!isAtOrBelow(e.dn, vmDn) || isAtOrBelow(e.dn, backupDn)) {
        throw new BackupError(`${e.dn} is not part of VM ${vm}'s subtree (or is in its ou=backup)`, ReturnCode.backendXmlInconsistency);
      }
    }
    const live = (await this.find(vmDn, 'sub', '(objectClass=*)', ['*'])).filter((e) => !isAtOrBelow(e.dn, backupDn));
    const liveByDn = new Map(live.map((e) => [normalizeDn(e.dn), e]));
    const wanted = new Set(entries.map((e) => normalizeDn(e.dn)));
    // Deepest first: children before their parents.
    for (const e of [...live].sort((a, b) => dnDepth(b.dn) - dnDepth(a.dn))) {
      if (wanted.has(normalizeDn(e.dn))) continue;
      if (normalizeDn(e.dn) === normalizeDn(vmDn)) continue; // the VM entry carries ou=backup below it
      await this.session.del(e.dn).catch((err: unknown) => {
        throw DirectoryError.from(err, `delete ${e.dn}`, true);
      });
    }
    for (const e of [...entries].sort((a, b) => dnDepth(a.dn) - dnDepth(b.dn))) {
      const current = liveByDn.get(normalizeDn(e.dn));
      if (!current) {
        await this.session.add(e.dn, e.attributes).catch((err: unknown) => {
          throw DirectoryError.from(err, `add ${e.dn}`, true);
        });
        continue;
      }
      const have = toAttributes(current);
      const want = new Map(Object.entries(e.attributes).map(([k, v]) => [k.toLowerCase(), { name: k, values: v }]));
      const changes: Change[] = [];
      for (const [key, { name, values }] of want) {
        const now = have[key] ?? [];
        const same = now.length === values.length && (key === 'objectclass'
          ? values.every((v) => now.some((n) => n.toLowerCase() === v.toLowerCase()))
          : values.every((v) => now.includes(v)));
        if (!same) changes.push(new Change({ operation: 'replace', modification: new Attribute({ type: name, values }) }));
      }
      for (const [key, values] of Object.entries(have)) {
        // Only real attributes that hold values (a search for '*' may echo the request back).
        if (values.length === 0 || !/^[a-z][a-z0-9-]*(;[a-z0-9-]+)*$/i.test(key)) continue;
        if (!want.has(key)) changes.push(new Change({ operation: 'replace', modification: new Attribute({ type: key, values: [] }) }));
      }
      if (changes.length === 0) continue;
      await this.session.modify(e.dn, changes).catch((err: unknown) => {
        throw DirectoryError.from(err, `modify ${e.dn}`, true);
      });
    }
  }

  async close(): Promise<void> {
    await this.session.close();
  }
}
