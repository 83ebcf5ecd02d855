import type { Entry } from 'ldapts';

/** Operational attributes slapd adds itself; an LDIF meant for ldapadd must not carry them. */
const operational = new Set([
  'structuralobjectclass', 'entryuuid', 'creatorsname', 'createtimestamp', 'entrycsn', 'modifiersname',
  'modifytimestamp', 'entrydn', 'subschemasubentry', 'hassubordinates', 'contextcsn', 'numsubordinates',
]);

/**
 * RFC 2849: a value can be written plain when it is ASCII without NUL/CR/LF,
 * does not start with space, colon or '<', and does not end with a space;
 * everything else goes base64 (`attr:: …`).
 */
export function needsBase64(value: string): boolean {
  if (value === '') return false;
  if (/^[ :<]/.test(value) || value.endsWith(' ')) return true;
  return /[^\x01-\x09\x0b\x0c\x0e-\x7f]/.test(value);
}

/** `name: value` or `name:: base64`, folded at 76 columns (continuation lines start with one space). */
export function ldifLine(name: string, value: string | Buffer): string {
  const text = Buffer.isBuffer(value) ? undefined : value;
  const line = text !== undefined && !needsBase64(text)
    ? `${name}: ${text}`
    : `${name}:: ${(Buffer.isBuffer(value) ? value : Buffer.from(value, 'utf8')).toString('base64')}`;
  return fold(line);
}

function fold(line: string, width = 76): string {
  if (line.length <= width) return line;
  const parts = [line.slice(0, width)];
  for (let i = width; i < line.length; i += width - 1) parts.push(` ${line.slice(i, i + width - 1)}`);
  return parts.join('\n');
}

/**
 * Entries as LDIF content records (for ldapadd), user attributes only, in
 * the order given. objectClass comes first in each record for readability.
 */
export function entriesToLdif(entries: Entry[], header?: string): string {
  const records: string[] = [];
  for (const entry of entries) {
    const lines = [ldifLine('dn', entry.dn)];
    const names = Object.keys(entry).filter((n) => n !== 'dn' && !operational.has(n.toLowerCase()));
    names.sort((a, b) => rank(a) - rank(b));
    for (const name of names) {
      const raw = entry[name];
      const values = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
      for (const v of values) lines.push(ldifLine(name, v));
    }
    records.push(lines.join('\n'));
  }
  const head = header === undefined ? '' : `${header.split('\n').map((l) => `# ${l}`.trimEnd()).join('\n')}\n`;
  return `${head}version: 1\n\n${records.join('\n\n')}\n`;
}

function rank(name: string): number {
  return name.toLowerCase() === 'objectclass' ? 0 : 1;
}
