import { BackupError } from '../errors.js';
import { ReturnCode } from '../returnCodes.js';
import {
  addDeviceElement,
  diskElement,
  domainFacts,
  interfaceElement,
  isMac,
  removeDisk,
  removeInterface,
  removeUuid,
  setDiskSource,
  setInterfaceMac,
  setMemoryKiB,
  setName,
  setVcpus,
  type DomainFacts,
} from './domainFacts.js';
import { attributeValues, cloneEntry, withAttribute, type LdifEntry } from './ldifRecords.js';
import {
  depth,
  diskTarget,
  interfaceEntries,
  interfaceName,
  parentKey,
  rdnsBelow,
  vmSubtree,
  type SubtreeEntry,
} from './vmSubtree.js';

/**
 * Restore conflicts: what differs between a backup (its LDIF subtree and
 * domain XML) and the live VM, the user's decisions, and the decided LDIF
 * and XML the node writes back. Pure: the daemon reads and writes the files.
 *
 * Facts recorded in both the directory and the domain XML are ONE item, so
 * a decision can never split them: memory (sstMemory ↔ <memory>), vCPUs
 * (sstVCPU ↔ <vcpu>), the image of each disk target (sstSourceFile ↔ disk
 * <source>) and the MAC of each interface (sstMacAddress ↔ <mac>), the i-th
 * interface entry by name pairing with the i-th <interface>. A disk or
 * interface present on one side only is one item for its XML element and its
 * entry. Everything else in the directory is compared attribute by attribute
 * ('ldap:' items) and entry by entry ('entry:' items, one per one-sided
 * subtree).
 */
export type Side = 'backup' | 'live';

export interface RestoreInputs {
  /** DN of the VM entry, the same in both LDIFs */
  vmDn: string;
  backupLdif: LdifEntry[];
  /** undefined: the VM is gone from the directory */
  liveLdif: LdifEntry[] | undefined;
  backupXml: string;
  /** undefined: the domain is not defined in libvirt */
  liveXml: string | undefined;
}

export interface ConflictItem {
  /** stable: memory, vcpus, disk:<target>, nic:<i>:mac, nic:<i>, ldap:<relDn>:<attribute>, entry:<relDn> */
  id: string;
  label: string;
  /** the value on each side, as text; null = absent on that side */
  backup: string | null;
  live: string | null;
  /** what a decision on this item changes: directory entries (whole, or one attribute) and XML parts (XPath-like) */
  governs: { ldap?: { relDn: string; attribute?: string }[]; xml?: string[] };
}

export interface RestoreDecisions {
  prefer: Side;
  /** item id → side; ids compare case-insensitively */
  overrides: Record<string, Side>;
}

export interface DecidedRestore {
  /** the VM's entries to write back, parents first; never anything of ou=backup */
  ldif: LdifEntry[];
  xml: string;
  /** every item with the side taken */
  applied: { id: string; side: Side }[];
  /**
   * false when a live value changed something libvirt's ABI check compares
   * between a saved state and the XML it is restored with (memory size,
   * vCPUs, MAC, number of disks or interfaces): the daemon must then define
   * and cold-boot instead of `virsh restore --xml`.
   */
  stateCompatible: boolean;
}

/** Attributes the server maintains itself: never compared, never written back. */
const VOLATILE = new Set([
  'modifytimestamp', 'entrycsn', 'entryuuid', 'createtimestamp', 'creatorsname', 'modifiersname',
  'structuralobjectclass', 'entrydn', 'subschemasubentry', 'hassubordinates', 'contextcsn', 'numsubordinates',
]);

// ---------------------------------------------------------------- side models

interface SideModel {
  /** undefined: this side has no directory subtree */
  entries: Map<string, SubtreeEntry> | undefined;
  vm: SubtreeEntry | undefined;
  /** disk target → entry */
  diskEntries: Map<string, SubtreeEntry>;
  /** interface entries ordered by name */
  nicEntries: SubtreeEntry[];
  xml: string | undefined;
  facts: DomainFacts | undefined;
}

function sideModel(side: Side, vmDn: string, ldif: LdifEntry[] | undefined, xml: string | undefined): SideModel {
  const list = ldif === undefined ? [] : vmSubtree(vmDn, ldif);
  const vm = list.find((e) => e.key === '');
  // An LDIF without the VM entry means the VM is not in the directory.
  const entries = vm === undefined ? undefined : new Map(list.map((e) => [e.key, e]));
  const diskEntries = new Map<string, SubtreeEntry>();
  for (const e of entries?.values() ?? []) {
    const t = diskTarget(e);
    if (t !== undefined) diskEntries.set(t, e);
  }
  return {
    entries,
    vm,
    diskEntries,
    nicEntries: entries === undefined ? [] : interfaceEntries([...entries.values()]),
    xml,
    facts: xml === undefined ? undefined : readFacts(side, xml),
  };
}

function readFacts(side: Side, xml: string): DomainFacts {
  try {
    return domainFacts(xml);
  } catch (err) {
    throw new BackupError(`the ${side} domain XML cannot be read: ${(err as Error).message}`, ReturnCode.cannotReadXmlFile, { cause: err });
  }
}

// ---------------------------------------------------------------- analysis

/** The mutable result while decisions are applied. */
interface WorkState {
  entries: Map<string, SubtreeEntry>;
  xml: string;
}

interface Applier {
  /** 0 attribute-level edits, 1 whole disks, 2 interface removals, 3 other whole interfaces, 4 entries */
  phase: number;
  order: number;
  /** true when taking the live side changes what libvirt's ABI check compares */
  abi: boolean;
  run(state: WorkState): void;
}

interface Analysis {
  items: ConflictItem[];
  appliers: Map<string, Applier>;
  backup: SideModel;
  live: SideModel;
}

function analyse(inputs: RestoreInputs): Analysis {
  const backup = sideModel('backup', inputs.vmDn, inputs.backupLdif, inputs.backupXml);
  if (backup.entries === undefined) {
    throw new BackupError(`the backup's LDIF has no entry ${inputs.vmDn}`, ReturnCode.cannotFindMachine);
  }
  const live = sideModel('live', inputs.vmDn, inputs.liveLdif, inputs.liveXml);
  const items: ConflictItem[] = [];
  const appliers = new Map<string, Applier>();
  const add = (item: ConflictItem, applier: Applier): void => {
    items.push(item);
    appliers.set(item.id, applier);
  };
  const ctx: Ctx = { backup, live, bothXml: live.facts !== undefined, bothLdif: live.entries !== undefined, add };
  const wholly = new Set<string>(); // entry keys governed whole by a disk or interface item

  scalarItems(ctx);
  diskItems(ctx, wholly);
  nicItems(ctx, wholly);
  ldapItems(ctx, wholly);
  return { items, appliers, backup, live };
}

interface Ctx {
  backup: SideModel;
  live: SideModel;
  /** both sides have a domain definition */
  bothXml: boolean;
  /** both sides have the VM's directory subtree */
  bothLdif: boolean;
  add(item: ConflictItem, applier: Applier): void;
}

function sameSet(a: readonly string[], b: readonly string[], fold = false): boolean {
  const norm = (v: readonly string[]): string[] => [...new Set(fold ? v.map((x) => x.toLowerCase()) : v)].sort();
  const x = norm(a);
  const y = norm(b);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

function showValues(values: readonly string[]): string {
  return values.join(', ');
}

/** "<xml part> · <attribute> <values>" with the parts a side has. */
function describeLinked(
  side: SideModel,
  xmlPart: string | undefined,
  attribute: string,
  ldapValues: string[] | undefined,
  otherHasAttribute: boolean,
): string | null {
  const parts: string[] = [];
  if (side.facts !== undefined && xmlPart !== undefined) parts.push(xmlPart);
  if (ldapValues !== undefined && (ldapValues.length > 0 || otherHasAttribute)) {
    parts.push(ldapValues.length > 0 ? `${attribute} ${showValues(ldapValues)}` : `${attribute} absent`);
  }
  return parts.length === 0 ? null : parts.join(' · ');
}

/** Takes the live values of one attribute into an entry of the result (if the result has that entry). */
function takeLiveAttribute(state: WorkState, key: string, attribute: string, values: string[]): void {
  const cur = state.entries.get(key);
  if (cur) state.entries.set(key, { ...cur, entry: withAttribute(cur.entry, attribute, values) });
}

function scalarItems(ctx: Ctx): void {
  const { backup, live } = ctx;
  const memXml = (f: DomainFacts | undefined): string | undefined =>
    f === undefined
      ? undefined
      : `${f.memoryKiB} KiB${f.currentMemoryKiB !== undefined && f.currentMemoryKiB !== f.memoryKiB ? ` (current ${f.currentMemoryKiB} KiB)` : ''}`;
  const specs = [
    {
      id: 'memory',
      label: 'Memory',
      attribute: 'sstMemory',
      xml: memXml,
      governsXml: ['/domain/memory', '/domain/currentMemory'],
      setXml: (xml: string, f: DomainFacts) => setMemoryKiB(xml, f.memoryKiB, Math.min(f.currentMemoryKiB ?? f.memoryKiB, f.memoryKiB)),
    },
    {
      id: 'vcpus',
      label: 'Virtual CPUs',
      attribute: 'sstVCPU',
      xml: (f: DomainFacts | undefined) => (f === undefined ? undefined : String(f.vcpus)),
      governsXml: ['/domain/vcpu'],
      setXml: (xml: string, f: DomainFacts) => setVcpus(xml, f.vcpus),
    },
  ];
  for (const spec of specs) {
    const bXml = spec.xml(backup.facts);
    const lXml = spec.xml(live.facts);
    const bLdap = backup.vm ? attributeValues(backup.vm.entry, spec.attribute) : undefined;
    const lLdap = live.vm ? attributeValues(live.vm.entry, spec.attribute) : undefined;
    const xmlDiffers = ctx.bothXml && bXml !== lXml;
    const ldapDiffers = ctx.bothLdif && !sameSet(bLdap ?? [], lLdap ?? []);
    if (!xmlDiffers && !ldapDiffers) continue;
    const bHas = (bLdap?.length ?? 0) > 0;
    const lHas = (lLdap?.length ?? 0) > 0;
    const governsLdap = ctx.bothLdif ? [{ relDn: '', attribute: spec.attribute }] : [];
    const governsXml = ctx.bothXml ? spec.governsXml : [];
    ctx.add(
      {
        id: spec.id,
        label: spec.label,
        backup: describeLinked(backup, bXml, spec.attribute, bLdap, lHas),
        live: describeLinked(live, lXml, spec.attribute, lLdap, bHas),
        governs: { ...(governsLdap.length ? { ldap: governsLdap } : {}), ...(governsXml.length ? { xml: governsXml } : {}) },
      },
      {
        phase: 0,
        order: 0,
        abi: xmlDiffers,
        run: (state) => {
          if (ctx.bothXml && live.facts) state.xml = spec.setXml(state.xml, live.facts);
          if (ctx.bothLdif) takeLiveAttribute(state, '', spec.attribute, lLdap ?? []);
        },
      },
    );
  }
}

function diskItems(ctx: Ctx, wholly: Set<string>): void {
  const { backup, live } = ctx;
  const targets = new Set<string>();
  for (const s of [backup, live]) {
    for (const d of s.facts?.disks ?? []) targets.add(d.target);
    for (const t of s.diskEntries.keys()) targets.add(t);
  }
  for (const target of [...targets].sort()) {
    const bDisk = backup.facts?.disks.find((d) => d.target === target);
    const lDisk = live.facts?.disks.find((d) => d.target === target);
    const bEntry = backup.diskEntries.get(target);
    const lEntry = live.diskEntries.get(target);
    const xmlPath = `/domain/devices/disk[target/@dev='${target}']`;
    const describe = (side: SideModel, disk: typeof bDisk, entry: SubtreeEntry | undefined, otherHasFile: boolean): string | null => {
      const xmlPart = disk === undefined ? undefined : `${disk.source ?? '(no source)'}${disk.format ? ` (${disk.format})` : ''}`;
      const files = entry === undefined ? undefined : attributeValues(entry.entry, 'sstSourceFile');
      return describeLinked(side, xmlPart, 'sstSourceFile', files, otherHasFile);
    };
    const hasFile = (e: SubtreeEntry | undefined): boolean => e !== undefined && attributeValues(e.entry, 'sstSourceFile').length > 0;

    const xmlPresenceDiffers = ctx.bothXml && (bDisk === undefined) !== (lDisk === undefined);
    const ldapPresenceDiffers = ctx.bothLdif && (bEntry === undefined) !== (lEntry === undefined);
    if (xmlPresenceDiffers || ldapPresenceDiffers) {
      const keys = [bEntry, lEntry].filter((e): e is SubtreeEntry => e !== undefined);
      const ldap = ctx.bothLdif ? dedupe(keys).map((e) => ({ relDn: e.rel })) : [];
      if (ctx.bothLdif) for (const e of keys) wholly.add(e.key);
      const where = (side: 'backup' | 'live'): boolean =>
        side === 'backup' ? bDisk !== undefined || bEntry !== undefined : lDisk !== undefined || lEntry !== undefined;
      ctx.add(
        {
          id: `disk:${target}`,
          label: `Disk ${target} (${where('backup') && !where('live') ? 'only in the backup' : !where('backup') && where('live') ? 'only in the live VM' : 'not described alike on both sides'})`,
          backup: describe(backup, bDisk, bEntry, hasFile(lEntry)),
          live: describe(live, lDisk, lEntry, hasFile(bEntry)),
          governs: {
            ...(ldap.length ? { ldap } : {}),
            ...(ctx.bothXml && (bDisk || lDisk) ? { xml: [xmlPath] } : {}),
          },
        },
        {
          phase: 1,
          order: 0,
          abi: xmlPresenceDiffers,
          run: (state) => {
            if (ctx.bothXml) {
              const has = diskElement(state.xml, target) !== undefined;
              const liveEl = live.xml === undefined ? undefined : diskElement(live.xml, target);
              if (liveEl === undefined && has) state.xml = removeDisk(state.xml, target);
              else if (liveEl !== undefined && !has) state.xml = addDeviceElement(state.xml, liveEl);
              else if (liveEl !== undefined && lDisk?.source !== undefined) state.xml = setDiskSource(state.xml, target, lDisk.source);
            }
            if (ctx.bothLdif) {
              if (bEntry) state.entries.delete(bEntry.key);
              if (lEntry) state.entries.set(lEntry.key, cleanEntry(lEntry));
            }
          },
        },
      );
      continue;
    }

    const sourceDiffers = ctx.bothXml && bDisk !== undefined && lDisk !== undefined && bDisk.source !== lDisk.source;
    const bFiles = bEntry ? attributeValues(bEntry.entry, 'sstSourceFile') : undefined;
    const lFiles = lEntry ? attributeValues(lEntry.entry, 'sstSourceFile') : undefined;
    const fileDiffers = ctx.bothLdif && bEntry !== undefined && lEntry !== undefined && !sameSet(bFiles ?? [], lFiles ?? []);
    if (!sourceDiffers && !fileDiffers) continue;
    const xmlBoth = ctx.bothXml && bDisk !== undefined && lDisk !== undefined;
    const ldapBoth = ctx.bothLdif && bEntry !== undefined && lEntry !== undefined;
    ctx.add(
      {
        id: `disk:${target}`,
        label: `Disk ${target}: image`,
        backup: describe(backup, bDisk, bEntry, hasFile(lEntry)),
        live: describe(live, lDisk, lEntry, hasFile(bEntry)),
        governs: {
          ...(ldapBoth && bEntry ? { ldap: [{ relDn: bEntry.rel, attribute: 'sstSourceFile' }] } : {}),
          ...(xmlBoth ? { xml: [`${xmlPath}/source`] } : {}),
        },
      },
      {
        phase: 0,
        order: 0,
        abi: false,
        run: (state) => {
          if (xmlBoth && lDisk?.source !== undefined) state.xml = setDiskSource(state.xml, target, lDisk.source);
          if (ldapBoth && bEntry) takeLiveAttribute(state, bEntry.key, 'sstSourceFile', lFiles ?? []);
        },
      },
    );
  }
}

function nicItems(ctx: Ctx, wholly: Set<string>): void {
  const { backup, live } = ctx;
  const bNics = backup.facts?.interfaces ?? [];
  const lNics = live.facts?.interfaces ?? [];
  const count = Math.max(bNics.length, lNics.length, backup.nicEntries.length, live.nicEntries.length);
  for (let i = 0; i < count; i += 1) {
    const bNic = bNics[i];
    const lNic = lNics[i];
    const bEntry = backup.nicEntries[i];
    const lEntry = live.nicEntries[i];
    const xmlPath = `/domain/devices/interface[${i + 1}]`;
    const name = bEntry?.rel ?? lEntry?.rel;
    const describe = (side: SideModel, nic: typeof bNic, entry: SubtreeEntry | undefined, otherHasMac: boolean): string | null => {
      const xmlPart = nic === undefined ? undefined : `${nic.mac ?? '(no MAC)'} (${[nic.type, nic.source, nic.model].filter(Boolean).join(', ')})`;
      const macs = entry === undefined ? undefined : attributeValues(entry.entry, 'sstMacAddress');
      return describeLinked(side, xmlPart, 'sstMacAddress', macs, otherHasMac);
    };
    const hasMac = (e: SubtreeEntry | undefined): boolean => e !== undefined && attributeValues(e.entry, 'sstMacAddress').length > 0;

    const xmlPresenceDiffers = ctx.bothXml && (bNic === undefined) !== (lNic === undefined);
    // Entries pair by position; a different entry at the same position counts as a one-sided interface too.
    const ldapPresenceDiffers = ctx.bothLdif && bEntry?.key !== lEntry?.key;
    if (xmlPresenceDiffers || ldapPresenceDiffers) {
      const keys = [bEntry, lEntry].filter((e): e is SubtreeEntry => e !== undefined);
      const ldap = ctx.bothLdif ? dedupe(keys).map((e) => ({ relDn: e.rel })) : [];
      if (ctx.bothLdif) for (const e of keys) wholly.add(e.key);
      const removal = ctx.bothXml && bNic !== undefined && lNic === undefined;
      ctx.add(
        {
          id: `nic:${i}`,
          label: `Network interface ${i}${name ? ` (${name})` : ''} present on one side only`,
          backup: describe(backup, bNic, bEntry, hasMac(lEntry)),
          live: describe(live, lNic, lEntry, hasMac(bEntry)),
          governs: {
            ...(ldap.length ? { ldap } : {}),
            ...(ctx.bothXml && (bNic || lNic) ? { xml: [xmlPath] } : {}),
          },
        },
        {
          // Removals from the highest index down, additions from the lowest up, so indices stay valid.
          phase: removal ? 2 : 3,
          order: removal ? -i : i,
          abi: xmlPresenceDiffers || (ctx.bothXml && bNic?.mac !== lNic?.mac),
          run: (state) => {
            if (ctx.bothXml && live.xml !== undefined) {
              const liveEl = interfaceElement(live.xml, i);
              if (liveEl === undefined && interfaceElement(state.xml, i) !== undefined) state.xml = removeInterface(state.xml, i);
              else if (liveEl !== undefined && bNic === undefined) state.xml = addDeviceElement(state.xml, liveEl);
              else if (lNic?.mac !== undefined && interfaceElement(state.xml, i) !== undefined) state.xml = setInterfaceMac(state.xml, i, lNic.mac);
            }
            if (ctx.bothLdif) {
              if (bEntry) state.entries.delete(bEntry.key);
              if (lEntry) state.entries.set(lEntry.key, cleanEntry(lEntry));
            }
          },
        },
      );
      continue;
    }

    const macDiffers = ctx.bothXml && bNic !== undefined && lNic !== undefined && bNic.mac !== lNic.mac;
    const bMacs = bEntry ? attributeValues(bEntry.entry, 'sstMacAddress') : undefined;
    const lMacs = lEntry ? attributeValues(lEntry.entry, 'sstMacAddress') : undefined;
    const ldapMacDiffers = ctx.bothLdif && bEntry !== undefined && lEntry !== undefined && !sameSet(bMacs ?? [], lMacs ?? [], true);
    if (!macDiffers && !ldapMacDiffers) continue;
    const xmlBoth = ctx.bothXml && bNic !== undefined && lNic !== undefined;
    const ldapBoth = ctx.bothLdif && bEntry !== undefined && lEntry !== undefined;
    ctx.add(
      {
        id: `nic:${i}:mac`,
        label: `Network interface ${i}${name ? ` (${name})` : ''}: MAC address`,
        backup: describe(backup, bNic, bEntry, hasMac(lEntry)),
        live: describe(live, lNic, lEntry, hasMac(bEntry)),
        governs: {
          ...(ldapBoth && bEntry ? { ldap: [{ relDn: bEntry.rel, attribute: 'sstMacAddress' }] } : {}),
          ...(xmlBoth ? { xml: [`${xmlPath}/mac/@address`] } : {}),
        },
      },
      {
        phase: 0,
        order: 0,
        abi: macDiffers,
        run: (state) => {
          if (xmlBoth && lNic?.mac !== undefined) state.xml = setInterfaceMac(state.xml, i, lNic.mac);
          if (ldapBoth && bEntry) takeLiveAttribute(state, bEntry.key, 'sstMacAddress', lMacs ?? []);
        },
      },
    );
  }
}

/** Attributes compared by a linked item, not by an 'ldap:' item. */
function linkedAttributes(e: SubtreeEntry): Set<string> {
  if (e.key === '') return new Set(['sstmemory', 'sstvcpu']);
  if (diskTarget(e) !== undefined) return new Set(['sstsourcefile']);
  if (interfaceName(e) !== undefined) return new Set(['sstmacaddress']);
  return new Set();
}

function ldapItems(ctx: Ctx, wholly: Set<string>): void {
  const bEntries = ctx.backup.entries;
  const lEntries = ctx.live.entries;
  if (bEntries === undefined || lEntries === undefined) return;

  // Attributes of entries on both sides.
  for (const [key, b] of bEntries) {
    const l = lEntries.get(key);
    if (l === undefined || wholly.has(key)) continue;
    const linked = linkedAttributes(b);
    const names = new Map<string, string>(); // lower → spelling (backup's first)
    for (const e of [l, b]) for (const n of Object.keys(e.entry.attributes)) names.set(n.toLowerCase(), n);
    for (const lower of [...names.keys()].sort()) {
      if (VOLATILE.has(lower) || linked.has(lower)) continue;
      const spelling = names.get(lower) ?? lower;
      const bv = attributeValues(b.entry, lower);
      const lv = attributeValues(l.entry, lower);
      if (sameSet(bv, lv, lower === 'objectclass')) continue;
      const liveSpelling = Object.keys(l.entry.attributes).find((n) => n.toLowerCase() === lower) ?? spelling;
      ctx.add(
        {
          id: `ldap:${b.rel}:${lower}`,
          label: `Directory: ${spelling} of ${b.rel === '' ? 'the VM entry' : b.rel}`,
          backup: bv.length ? showValues(bv) : null,
          live: lv.length ? showValues(lv) : null,
          governs: { ldap: [{ relDn: b.rel, attribute: spelling }] },
        },
        { phase: 0, order: 0, abi: false, run: (state) => takeLiveAttribute(state, key, liveSpelling, lv) },
      );
    }
  }

  // Entries on one side only, one item per one-sided subtree (its top entry).
  const oneSided = (from: Map<string, SubtreeEntry>, other: Map<string, SubtreeEntry>): SubtreeEntry[] =>
    [...from.values()].filter((e) => !other.has(e.key) && !wholly.has(e.key));
  const candidates = [...oneSided(bEntries, lEntries), ...oneSided(lEntries, bEntries)];
  const candidateKeys = new Set(candidates.map((e) => e.key));
  const tops = candidates.filter((e) => {
    for (let p = parentKey(e.key); p !== undefined; p = parentKey(p)) if (candidateKeys.has(p)) return false;
    return true;
  });
  tops.sort((a, b) => depth(a.key) - depth(b.key) || (a.key < b.key ? -1 : 1));
  for (const top of tops) {
    const members = candidates
      .filter((e) => e.key === top.key || e.key.endsWith(`,${top.key}`))
      .sort((a, b) => depth(a.key) - depth(b.key));
    const inBackup = bEntries.has(top.key);
    const shown = describeEntry(top.entry, members.length - 1);
    ctx.add(
      {
        id: `entry:${top.rel}`,
        label: `Directory entry ${top.rel} (${inBackup ? 'only in the backup' : 'only in the live directory'})`,
        backup: inBackup ? shown : null,
        live: inBackup ? null : shown,
        governs: { ldap: members.map((e) => ({ relDn: e.rel })) },
      },
      {
        phase: 4,
        order: 0,
        abi: false,
        run: (state) => {
          for (const m of members) {
            const l = lEntries.get(m.key);
            if (l === undefined) state.entries.delete(m.key);
            else state.entries.set(m.key, cleanEntry(l));
          }
        },
      },
    );
  }
}

function describeEntry(entry: LdifEntry, below: number): string {
  const lines = Object.entries(entry.attributes)
    .filter(([n]) => !VOLATILE.has(n.toLowerCase()))
    .flatMap(([n, vs]) => vs.map((v) => `${n}: ${v}`));
  if (below > 0) lines.push(`(and ${below} ${below === 1 ? 'entry' : 'entries'} below it)`);
  return lines.join('\n');
}

function dedupe(entries: SubtreeEntry[]): SubtreeEntry[] {
  const seen = new Set<string>();
  return entries.filter((e) => (seen.has(e.key) ? false : (seen.add(e.key), true)));
}

/** A copy without the attributes the server maintains. */
function cleanEntry(e: SubtreeEntry): SubtreeEntry {
  const attributes: Record<string, string[]> = {};
  for (const [n, vs] of Object.entries(e.entry.attributes)) if (!VOLATILE.has(n.toLowerCase())) attributes[n] = [...vs];
  return { ...e, entry: { dn: e.entry.dn, attributes } };
}

// ---------------------------------------------------------------- public API

/** Every difference between the backup and the live VM, in a stable order (linked facts, disks, interfaces, directory). */
export function computeConflicts(inputs: RestoreInputs): ConflictItem[] {
  return analyse(inputs).items;
}

/** Decisions `{"prefer": "backup"|"live", "overrides": {"<id>": "backup"|"live"}}` from a parsed value (the `decisions` of a restore request), checked field by field. */
export function decisionsFrom(raw: unknown): RestoreDecisions {
  const bad = (what: string): BackupError => new BackupError(`restore decisions: ${what}`, ReturnCode.unsupportedConfigurationParameter);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('expected an object');
  const obj = raw as Record<string, unknown>;
  const extra = Object.keys(obj).filter((k) => k !== 'prefer' && k !== 'overrides');
  if (extra.length > 0) throw bad(`unknown field(s) ${extra.join(', ')}`);
  if (!isSide(obj['prefer'])) throw bad(`"prefer" must be "backup" or "live", got ${JSON.stringify(obj['prefer'])}`);
  const overrides: Record<string, Side> = {};
  const rawOverrides = obj['overrides'] ?? {};
  if (typeof rawOverrides !== 'object' || rawOverrides === null || Array.isArray(rawOverrides)) throw bad('"overrides" must be an object');
  for (const [id, side] of Object.entries(rawOverrides)) {
    if (!isSide(side)) throw bad(`override ${JSON.stringify(id)} must be "backup" or "live", got ${JSON.stringify(side)}`);
    overrides[id] = side;
  }
  return { prefer: obj['prefer'], overrides };
}

function isSide(v: unknown): v is Side {
  return v === 'backup' || v === 'live';
}

/**
 * The decided LDIF and XML: the backup's, with the live value taken for
 * every item decided 'live', in both the directory and the XML parts the
 * item governs. Without a live directory subtree or a live domain every item
 * is taken from the backup. Refuses (code 39) overrides naming unknown
 * items, and (code 33) a result whose directory and XML contradict each
 * other, see {@link checkConsistency}.
 */
export function applyDecisions(inputs: RestoreInputs, decisions: RestoreDecisions): DecidedRestore {
  const { items, appliers, backup, live } = analyse(inputs);
  const byLowerId = new Map(items.map((it) => [it.id.toLowerCase(), it.id]));
  const overrides = new Map<string, Side>();
  const unknown: string[] = [];
  for (const [id, side] of Object.entries(decisions.overrides)) {
    const known = byLowerId.get(id.toLowerCase());
    if (known === undefined) unknown.push(id);
    else overrides.set(known, side);
  }
  if (unknown.length > 0) {
    throw new BackupError(
      `unknown conflict id(s) in the restore decisions: ${unknown.map((u) => JSON.stringify(u)).join(', ')}` +
        ` (known: ${items.length ? items.map((i) => i.id).join(', ') : 'none, there are no conflicts'})`,
      ReturnCode.unsupportedConfigurationParameter,
    );
  }
  const liveUsable = live.entries !== undefined && live.facts !== undefined;
  const state: WorkState = {
    entries: new Map([...(backup.entries?.values() ?? [])].map((e) => [e.key, cleanEntry(e)])),
    xml: inputs.backupXml,
  };
  const applied = items.map((it) => ({ id: it.id, side: liveUsable ? (overrides.get(it.id) ?? decisions.prefer) : ('backup' as Side) }));
  const toRun = applied
    .filter((a) => a.side === 'live')
    .map((a) => appliers.get(a.id))
    .filter((a): a is Applier => a !== undefined)
    .sort((a, b) => a.phase - b.phase || a.order - b.order);
  for (const a of toRun) a.run(state);

  // Parents first; siblings keep their order (the backup's, then added ones).
  const result = [...state.entries.values()]
    .map((e, i) => ({ e, i }))
    .sort((a, b) => depth(a.e.key) - depth(b.e.key) || a.i - b.i)
    .map(({ e }) => e.entry);
  const problems = checkConsistency(inputs.vmDn, result, state.xml);
  if (problems.length > 0) {
    throw new BackupError(`the decided directory entries and domain XML contradict each other: ${problems.join('; ')}`, ReturnCode.backendXmlInconsistency);
  }
  return { ldif: result, xml: state.xml, applied, stateCompatible: !toRun.some((a) => a.abi) };
}

/**
 * Where a VM's directory subtree and its domain XML disagree: sstMemory
 * (bytes) vs <memory>, sstVCPU vs <vcpu>, each disk entry's sstSourceFile vs
 * the source of its target, each interface entry's sstMacAddress vs the MAC
 * of the interface at its position; and entries whose parent is missing.
 * A fact is only checked when the entry carries the attribute (backups of
 * the original implementation lack some). Empty = consistent.
 */
export function checkConsistency(vmDn: string, ldif: readonly LdifEntry[], xml: string): string[] {
  const problems: string[] = [];
  const facts = domainFacts(xml);
  const entries = vmSubtree(vmDn, ldif);
  const keys = new Set(entries.map((e) => e.key));
  const vm = entries.find((e) => e.key === '');

  const single = (e: SubtreeEntry, attribute: string): string | undefined => {
    const vs = attributeValues(e.entry, attribute);
    if (vs.length > 1) problems.push(`${e.rel || 'the VM entry'} has ${vs.length} values of ${attribute}`);
    return vs[0];
  };
  if (vm) {
    const mem = single(vm, 'sstMemory');
    if (mem !== undefined && mem.trim() !== String(facts.memoryKiB * 1024)) {
      problems.push(`memory: sstMemory ${mem} bytes but the XML has ${facts.memoryKiB} KiB (${facts.memoryKiB * 1024} bytes)`);
    }
    const vcpu = single(vm, 'sstVCPU');
    if (vcpu !== undefined && vcpu.trim() !== String(facts.vcpus)) {
      problems.push(`vCPUs: sstVCPU ${vcpu} but the XML has ${facts.vcpus}`);
    }
  }
  for (const e of entries) {
    const target = diskTarget(e);
    if (target === undefined) continue;
    const file = single(e, 'sstSourceFile');
    if (file === undefined) continue;
    const disk = facts.disks.find((d) => d.target === target);
    if (disk === undefined) problems.push(`disk ${target}: sstSourceFile ${file} but the XML has no disk ${target}`);
    else if (disk.source !== file) problems.push(`disk ${target}: sstSourceFile ${file} but the XML source is ${disk.source ?? '(none)'}`);
  }
  interfaceEntries(entries).forEach((e, i) => {
    const mac = single(e, 'sstMacAddress');
    if (mac === undefined) return;
    const nic = facts.interfaces[i];
    if (nic === undefined) problems.push(`interface ${i} (${e.rel}): sstMacAddress ${mac} but the XML has no interface ${i}`);
    else if (nic.mac !== mac.toLowerCase()) problems.push(`interface ${i} (${e.rel}): sstMacAddress ${mac} but the XML MAC is ${nic.mac ?? '(none)'}`);
  });
  for (const e of entries) {
    const p = parentKey(e.key);
    if (p !== undefined && !keys.has(p)) problems.push(`entry ${e.rel} has no parent entry`);
  }
  return problems;
}

export interface RestoreAsOptions {
  oldName: string;
  newName: string;
  oldVmDn: string;
  newVmDn: string;
  /** new path of a disk image (called once per distinct old path) */
  diskPath: (oldPath: string) => string;
  /** a fresh MAC (called once per distinct old MAC) */
  newMac: () => string;
}

/**
 * The decided LDIF and XML turned into a new VM beside the original: DNs
 * moved below newVmDn, sstVirtualMachine and the domain <name> set to the
 * new name, <uuid> removed (libvirt assigns one on define), every disk
 * source (sstSourceFile and XML, every disk kind: diskPath may return a path
 * unchanged, e.g. for an ISO) mapped through diskPath, every MAC replaced
 * through newMac, the same old MAC always by the same new one (XML
 * interfaces first in document order, then directory values). Nothing of
 * ou=backup and nothing outside the old VM's subtree is kept.
 * The result cannot be restored from the original's saved state (UUID and
 * MACs differ): define it and boot it.
 */
export function renameForRestoreAs(decidedLdif: readonly LdifEntry[], decidedXml: string, opts: RestoreAsOptions): { ldif: LdifEntry[]; xml: string } {
  const paths = new Map<string, string>();
  const mapPath = (p: string): string => {
    let n = paths.get(p);
    if (n === undefined) {
      n = opts.diskPath(p);
      paths.set(p, n);
    }
    return n;
  };
  const macs = new Map<string, string>();
  const mapMac = (m: string): string => {
    const key = m.toLowerCase();
    let n = macs.get(key);
    if (n === undefined) {
      n = opts.newMac().toLowerCase();
      if (!isMac(n)) throw new Error(`newMac returned an invalid MAC address ${JSON.stringify(n)}`);
      macs.set(key, n);
    }
    return n;
  };

  if (rdnsBelow(opts.newVmDn, opts.oldVmDn) !== undefined || rdnsBelow(opts.oldVmDn, opts.newVmDn) !== undefined) {
    throw new BackupError(`the new VM's DN ${opts.newVmDn} overlaps the original's ${opts.oldVmDn}`, ReturnCode.unsupportedConfigurationParameter);
  }
  let xml = removeUuid(setName(decidedXml, opts.newName));
  const facts = domainFacts(xml);
  facts.interfaces.forEach((nic, i) => {
    if (nic.mac !== undefined) xml = setInterfaceMac(xml, i, mapMac(nic.mac));
  });
  for (const disk of facts.disks) if (disk.source !== undefined) xml = setDiskSource(xml, disk.target, mapPath(disk.source));

  const ldif = vmSubtree(opts.oldVmDn, decidedLdif).map(({ rel, entry }) => {
    let e = cloneEntry(entry);
    e.dn = rel === '' ? opts.newVmDn : `${rel},${opts.newVmDn}`;
    if (rel === '') e = withAttribute(e, 'sstVirtualMachine', [opts.newName]);
    const files = attributeValues(e, 'sstSourceFile');
    if (files.length) e = withAttribute(e, 'sstSourceFile', files.map(mapPath));
    const entryMacs = attributeValues(e, 'sstMacAddress');
    if (entryMacs.length) e = withAttribute(e, 'sstMacAddress', entryMacs.map(mapMac));
    return e;
  });
  return { ldif, xml };
}

/** A random locally administered unicast MAC in QEMU's prefix: 52:54:00:xx:xx:xx. */
export function randomMac(random: () => number = Math.random): string {
  const byte = (): string =>
    Math.min(255, Math.max(0, Math.floor(random() * 256)))
      .toString(16)
      .padStart(2, '0');
  return `52:54:00:${byte()}:${byte()}:${byte()}`;
}

/** A readable diff for the CLI: one block per item (label and id, `- backup:`, `+ live:`). */
export function formatConflicts(items: readonly ConflictItem[]): string {
  if (items.length === 0) return 'No differences between the backup and the live VM.\n';
  const value = (v: string | null, indent: string): string => (v === null ? '(absent)' : v.split('\n').join(`\n${indent}`));
  return items
    .map((it) => [`${it.label}  [${it.id}]`, `- backup: ${value(it.backup, '          ')}`, `+ live:   ${value(it.live, '          ')}`].join('\n'))
    .join('\n\n')
    .concat('\n');
}
