import type { Entry } from 'ldapts';
import type { Attributes } from '../domain/settings.js';
import type { DiskEntry, LeafEntry, VmEntry } from './types.js';
import { leafRdnValue, rdnValue } from './ditPaths.js';

/** Attributes every read of a leaf asks for (operational ones must be named explicitly). */
export const leafAttributes = [
  'objectClass', 'ou', 'sstProvisioningMode', 'sstProvisioningState', 'sstProvisioningReturnValue',
  'sstProvisioningExecutionDate', 'sstProvisioningExecutionTime', 'modifyTimestamp', 'entryCSN',
];

/** An ldapts entry as Attributes: lower-cased names, string values, without `dn`. */
export function toAttributes(entry: Entry): Attributes {
  const out: Attributes = {};
  for (const [name, raw] of Object.entries(entry)) {
    if (name === 'dn') continue;
    const values = (Array.isArray(raw) ? raw : [raw]).map((v) => (Buffer.isBuffer(v) ? v.toString('utf8') : String(v)));
    const key = name.toLowerCase();
    out[key] = [...(out[key] ?? []), ...values];
  }
  return out;
}

function first(a: Attributes, name: string): string | undefined {
  return a[name]?.[0];
}

export function diskFromEntry(entry: Entry): DiskEntry {
  const a = toAttributes(entry);
  return {
    dn: entry.dn,
    target: first(a, 'sstdisk') ?? rdnValue(entry.dn, 'sstDisk') ?? '',
    device: first(a, 'sstdevice') ?? 'disk',
    type: first(a, 'ssttype') ?? 'file',
    sourceFile: first(a, 'sstsourcefile'),
    driverType: first(a, 'sstdrivertype'),
  };
}

export function vmFromEntry(entry: Entry, disks: DiskEntry[]): VmEntry {
  const a = toAttributes(entry);
  return {
    dn: entry.dn,
    name: first(a, 'sstvirtualmachine') ?? rdnValue(entry.dn, 'sstVirtualMachine') ?? '',
    node: first(a, 'sstnode') ?? '',
    pool: first(a, 'sstvirtualmachinepool') ?? '',
    type: first(a, 'sstvirtualmachinetype') ?? '',
    disks: [...disks].sort((x, y) => x.target.localeCompare(y.target)),
    attributes: a,
  };
}

/** "snapshot: 1.23" values → { snapshot: 1.23 }; unparsable values are skipped. */
export function parseExecutionTime(values: string[] | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values ?? []) {
    const m = /^\s*([^:\s]+)\s*:\s*(-?\d+(?:\.\d+)?)\s*$/.exec(v);
    if (m?.[1] !== undefined && m[2] !== undefined) out[m[1]] = Number(m[2]);
  }
  return out;
}

/** { snapshot: 1.234 } → ["snapshot: 1.234"], sorted by key for stable output. */
export function formatExecutionTime(times: Record<string, number>): string[] {
  return Object.keys(times)
    .sort()
    .map((k) => `${k}: ${formatSeconds(times[k] ?? 0)}`);
}

function formatSeconds(s: number): string {
  return String(Math.round(s * 1000) / 1000);
}

/** LDAP GeneralizedTime (20261122042252Z, 20261122042252.123Z, …+0100) → Date. */
export function parseGeneralizedTime(v: string | undefined): Date | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})?(\d{2})?(?:[.,](\d+))?(Z|[+-]\d{2}(?:\d{2})?)$/.exec(v.trim());
  if (!m) return undefined;
  const [, y, mo, d, h, mi = '00', s = '00', frac = '', zone = 'Z'] = m;
  const ms = frac === '' ? 0 : Math.round(Number(`0.${frac}`) * 1000);
  let t = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), ms);
  if (zone !== 'Z') {
    const sign = zone.startsWith('-') ? -1 : 1;
    const offset = Number(zone.slice(1, 3)) * 60 + Number(zone.slice(3, 5) || '0');
    t -= sign * offset * 60_000;
  }
  const date = new Date(t);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

export function leafFromEntry(entry: Entry): LeafEntry {
  return leafFromAttributes(entry.dn, toAttributes(entry));
}

/** A leaf from its DN and attributes (as a search or the change feed delivers them). */
export function leafFromAttributes(dn: string, a: Attributes): LeafEntry {
  const rv = first(a, 'sstprovisioningreturnvalue');
  return {
    dn,
    vm: rdnValue(dn, 'sstVirtualMachine') ?? '',
    leaf: leafRdnValue(dn) ?? first(a, 'ou') ?? '',
    mode: first(a, 'sstprovisioningmode') ?? '',
    state: first(a, 'sstprovisioningstate') ?? '',
    returnValue: rv === undefined || !/^-?\d+$/.test(rv.trim()) ? undefined : Number(rv),
    executionTime: parseExecutionTime(a['sstprovisioningexecutiontime']),
    modifiedAt: parseGeneralizedTime(first(a, 'modifytimestamp')),
  };
}

/** Leaves sorted oldest first: by leaf name (a UTC timestamp), then DN. */
export function sortLeaves(leaves: LeafEntry[]): LeafEntry[] {
  return [...leaves].sort((x, y) => (x.leaf === y.leaf ? x.dn.localeCompare(y.dn) : x.leaf < y.leaf ? -1 : 1));
}
