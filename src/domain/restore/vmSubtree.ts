import { attributeValues, type LdifEntry } from './ldifRecords.js';

/**
 * DN arithmetic for a VM's directory subtree, on DNs as slapd writes them.
 * Names compare case-insensitively (every naming attribute of the stoney
 * schema uses caseIgnoreMatch); escaped commas (`\,`) stay inside their RDN.
 */
export function splitDn(dn: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < dn.length; i += 1) {
    const c = dn[i] ?? '';
    if (c === '\\' && i + 1 < dn.length) {
      cur += c + (dn[i + 1] ?? '');
      i += 1;
    } else if (c === ',') {
      out.push(cur.trim());
      cur = '';
    } else {
      cur += c;
    }
  }
  if (cur.trim() !== '' || out.length > 0) out.push(cur.trim());
  return out;
}

/**
 * An RDN as the server compares it: `sstDisk = VDA` → `sstdisk=vda`. The
 * value's escapes are undone (`\62ackup` and `back\75p` are `backup`),
 * insignificant spaces dropped and case folded (caseIgnoreMatch), and `ou`'s
 * OID spelling read as `ou` — else a hostile LDIF could name the VM's
 * ou=backup in a spelling that passes a text comparison.
 */
export function normalizeRdn(rdn: string): string {
  const eq = rdn.indexOf('=');
  if (eq < 0) return rdn.trim().toLowerCase();
  let type = rdn.slice(0, eq).trim().toLowerCase();
  if (type === '2.5.4.11' || type === 'organizationalunitname') type = 'ou';
  const value = unescapeDnValue(rdn.slice(eq + 1)).trim().replace(/\s+/g, ' ').toLowerCase();
  // Keys made of normalized RDNs are split on commas again: the separators stay escaped.
  return `${type}=${value.replace(/[\\,+]/g, '\\$&')}`;
}

/** `\XX` hex pairs (UTF-8 bytes) and `\c` escapes of an RDN value, undone. */
function unescapeDnValue(v: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < v.length; i += 1) {
    const c = v[i]!;
    if (c === '\\' && /^[0-9a-fA-F]{2}$/.test(v.slice(i + 1, i + 3))) {
      bytes.push(parseInt(v.slice(i + 1, i + 3), 16));
      i += 2;
    } else if (c === '\\' && i + 1 < v.length) {
      bytes.push(...Buffer.from(v[i + 1]!, 'utf8'));
      i += 1;
    } else {
      bytes.push(...Buffer.from(c, 'utf8'));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Attribute type and value of an RDN (`sstDisk=vda` → ['sstDisk', 'vda']). */
export function rdnParts(rdn: string): [string, string] {
  const eq = rdn.indexOf('=');
  return eq < 0 ? [rdn.trim(), ''] : [rdn.slice(0, eq).trim(), rdn.slice(eq + 1).trim()];
}

/**
 * The RDNs of `dn` below `baseDn` (nearest the base last), [] for the base
 * itself, undefined when dn is not at or below the base.
 */
export function rdnsBelow(dn: string, baseDn: string): string[] | undefined {
  const rdns = splitDn(dn);
  const base = splitDn(baseDn).map(normalizeRdn);
  if (rdns.length < base.length) return undefined;
  const tail = rdns.slice(rdns.length - base.length).map(normalizeRdn);
  if (tail.some((r, i) => r !== base[i])) return undefined;
  return rdns.slice(0, rdns.length - base.length);
}

/** An entry of the VM's subtree with its DN relative to the VM (`''` for the VM entry). */
export interface SubtreeEntry {
  /** as written, e.g. `sstDisk=vda,ou=devices` */
  rel: string;
  /** normalized, for lookups */
  key: string;
  entry: LdifEntry;
}

export function relKey(rdns: readonly string[]): string {
  return rdns.map(normalizeRdn).join(',');
}

/**
 * The VM's own entries from an LDIF: at or below vmDn, never at or below its
 * `ou=backup` (backups are not part of what is restored). Input order kept.
 */
export function vmSubtree(vmDn: string, entries: readonly LdifEntry[]): SubtreeEntry[] {
  const out: SubtreeEntry[] = [];
  for (const entry of entries) {
    const rdns = rdnsBelow(entry.dn, vmDn);
    if (rdns === undefined) continue;
    const nearest = rdns[rdns.length - 1];
    if (nearest !== undefined && normalizeRdn(nearest) === 'ou=backup') continue;
    out.push({ rel: rdns.join(','), key: relKey(rdns), entry });
  }
  return out;
}

export function isBackupSubtree(vmDn: string, dn: string): boolean {
  const rdns = rdnsBelow(dn, vmDn);
  const nearest = rdns?.[rdns.length - 1];
  return nearest !== undefined && normalizeRdn(nearest) === 'ou=backup';
}

/** Parent key of a relative key ('' for children of the VM entry; undefined for the VM entry). */
export function parentKey(key: string): string | undefined {
  if (key === '') return undefined;
  const rdns = splitDn(key);
  return rdns.slice(1).join(',');
}

export function depth(key: string): number {
  return key === '' ? 0 : splitDn(key).length;
}

/** A disk entry (`sstDisk=<target>,ou=devices`) → its target. */
export function diskTarget(e: SubtreeEntry): string | undefined {
  const rdns = splitDn(e.rel);
  if (rdns.length !== 2 || normalizeRdn(rdns[1] ?? '') !== 'ou=devices') return undefined;
  const [type, value] = rdnParts(rdns[0] ?? '');
  if (type.toLowerCase() !== 'sstdisk') return undefined;
  return attributeValues(e.entry, 'sstDisk')[0] ?? value;
}

/** An interface entry (`sstInterface=<name>,ou=devices`) → its name. */
export function interfaceName(e: SubtreeEntry): string | undefined {
  const rdns = splitDn(e.rel);
  if (rdns.length !== 2 || normalizeRdn(rdns[1] ?? '') !== 'ou=devices') return undefined;
  const [type, value] = rdnParts(rdns[0] ?? '');
  return type.toLowerCase() === 'sstinterface' ? value : undefined;
}

/** Interface entries ordered by name: the i-th pairs with the i-th <interface> of the domain XML. */
export function interfaceEntries(entries: readonly SubtreeEntry[]): SubtreeEntry[] {
  const named = entries.flatMap((e) => {
    const name = interfaceName(e);
    return name === undefined ? [] : [{ name: name.toLowerCase(), e }];
  });
  named.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return named.map((n) => n.e);
}
