import { ldifLine } from '../../directory/ldif.js';

/**
 * One LDIF content record. Attribute names keep the spelling they were
 * written with; LDAP attribute names are case-insensitive, so look them up
 * with {@link attributeValues}, never by indexing `attributes` directly.
 */
export interface LdifEntry {
  dn: string;
  attributes: Record<string, string[]>;
}

/**
 * Reads LDIF content records (RFC 2849) as written by entriesToLdif in
 * src/directory/ldif.ts and by ldapsearch: `version:` line, `#` comments,
 * folded lines (continuations start with one space), `attr:: base64`,
 * records separated by blank lines. Change records and `attr:< URL` values
 * are refused: a backup LDIF never contains them. Values of one attribute
 * spelled differently (`cn`, `CN`) are gathered under the first spelling.
 * Malformed input throws an Error naming the line.
 */
export function parseLdif(text: string): LdifEntry[] {
  const entries: LdifEntry[] = [];
  let current: { entry: LdifEntry; keys: Map<string, string> } | undefined;
  let first = true;

  for (const { line, lineNo } of logicalLines(text)) {
    if (line === '') {
      if (current) entries.push(current.entry);
      current = undefined;
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([A-Za-z0-9][A-Za-z0-9;.-]*):(:|<)?(.*)$/.exec(line);
    if (!m) throw new Error(`LDIF line ${lineNo}: expected "name: value", got ${JSON.stringify(line.slice(0, 60))}`);
    const [, name = '', kind, rest = ''] = m;
    const value = decodeValue(kind, rest, lineNo);
    const lower = name.toLowerCase();

    if (first && current === undefined && lower === 'version') {
      first = false;
      if (value.trim() !== '1') throw new Error(`LDIF line ${lineNo}: unsupported LDIF version ${JSON.stringify(value)}`);
      continue;
    }
    first = false;
    if (current === undefined) {
      if (lower !== 'dn') throw new Error(`LDIF line ${lineNo}: a record must start with "dn:", got "${name}:"`);
      current = { entry: { dn: value, attributes: {} }, keys: new Map() };
      continue;
    }
    if (lower === 'dn') throw new Error(`LDIF line ${lineNo}: second "dn:" in one record (missing blank line?)`);
    if (lower === 'changetype' || lower === 'control') {
      throw new Error(`LDIF line ${lineNo}: change records are not supported (only content records)`);
    }
    let key = current.keys.get(lower);
    if (key === undefined) {
      key = name;
      current.keys.set(lower, key);
    }
    (current.entry.attributes[key] ??= []).push(value);
  }
  if (current) entries.push(current.entry);
  return entries;
}

/** Unfolds continuation lines; yields each logical line with the number of its first physical line. */
function* logicalLines(text: string): Generator<{ line: string; lineNo: number }> {
  const physical = text.split(/\r?\n/);
  let pending: { line: string; lineNo: number } | undefined;
  for (let i = 0; i < physical.length; i += 1) {
    const raw = physical[i] ?? '';
    if (raw.startsWith(' ') && pending !== undefined && pending.line !== '') {
      pending.line += raw.slice(1);
      continue;
    }
    if (raw.startsWith(' ') && raw.trim() !== '') {
      throw new Error(`LDIF line ${i + 1}: continuation line without a line to continue`);
    }
    if (pending) yield pending;
    // A line of only spaces separates records like an empty one.
    pending = { line: raw.trim() === '' ? '' : raw, lineNo: i + 1 };
  }
  if (pending) yield pending;
}

function decodeValue(kind: string | undefined, rest: string, lineNo: number): string {
  const text = rest.replace(/^ +/, '');
  if (kind === '<') throw new Error(`LDIF line ${lineNo}: URL values ("name:< url") are not supported`);
  if (kind !== ':') return text;
  const b64 = text.trim();
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) {
    throw new Error(`LDIF line ${lineNo}: invalid base64 value`);
  }
  return Buffer.from(b64, 'base64').toString('utf8');
}

/**
 * Entries as LDIF content records, with the value encoding and folding of
 * entriesToLdif (src/directory/ldif.ts): plain when safe, else base64,
 * folded at 76 columns, objectClass first. Unlike entriesToLdif it keeps
 * every attribute it is given, so that parseLdif(formatLdif(x)) equals x.
 */
export function formatLdif(entries: readonly LdifEntry[], header?: string): string {
  const records = entries.map((entry) => {
    const lines = [ldifLine('dn', entry.dn)];
    const names = Object.keys(entry.attributes);
    names.sort((a, b) => rank(a) - rank(b));
    for (const name of names) for (const v of entry.attributes[name] ?? []) lines.push(ldifLine(name, v));
    return lines.join('\n');
  });
  const head = header === undefined ? '' : `${header.split('\n').map((l) => `# ${l}`.trimEnd()).join('\n')}\n`;
  return records.length === 0 ? `${head}version: 1\n` : `${head}version: 1\n\n${records.join('\n\n')}\n`;
}

function rank(name: string): number {
  return name.toLowerCase() === 'objectclass' ? 0 : 1;
}

/** Values of an attribute, whatever its spelling in the entry (empty when absent). */
export function attributeValues(entry: LdifEntry, name: string): string[] {
  const lower = name.toLowerCase();
  const out: string[] = [];
  for (const [key, values] of Object.entries(entry.attributes)) if (key.toLowerCase() === lower) out.push(...values);
  return out;
}

/**
 * Replaces an attribute's values (every spelling of its name); an empty list
 * removes it. Returns a new entry.
 */
export function withAttribute(entry: LdifEntry, name: string, values: readonly string[]): LdifEntry {
  const lower = name.toLowerCase();
  const attributes: Record<string, string[]> = {};
  let placed = false;
  for (const [key, vals] of Object.entries(entry.attributes)) {
    if (key.toLowerCase() !== lower) {
      attributes[key] = [...vals];
    } else if (!placed && values.length > 0) {
      attributes[key] = [...values];
      placed = true;
    }
  }
  if (!placed && values.length > 0) attributes[name] = [...values];
  return { dn: entry.dn, attributes };
}

export function cloneEntry(entry: LdifEntry): LdifEntry {
  return { dn: entry.dn, attributes: Object.fromEntries(Object.entries(entry.attributes).map(([k, v]) => [k, [...v]])) };
}
