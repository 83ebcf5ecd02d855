import { assertSafeName } from '../domain/names.js';
import { isLeafName } from '../domain/leafName.js';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';

/**
 * DNs of the stoney cloud virtualization service (reference:
 * stoney-directory.md). Every name that goes into a DN is validated first
 * and escaped (RFC 4514), so a name from a user or the directory can never
 * address a different entry.
 */
export interface DitPaths {
  baseDn: string;
  /** ou=virtualization,ou=services,<base> */
  serviceDn: string;
  /** ou=virtual machines,<service> */
  vmsDn: string;
  /** ou=virtual machine pools,<service> */
  poolsDn: string;
  /** ou=nodes,<service> */
  nodesDn: string;
  /** ou=backup,ou=configuration,<service>: global settings */
  globalBackupDn: string;
  vmDn(vm: string): string;
  /** ou=backup,<vm>: the VM's settings and the parent of its leaves */
  vmBackupDn(vm: string): string;
  leafDn(vm: string, leaf: string): string;
  poolDn(pool: string): string;
  poolBackupDn(pool: string): string;
  nodeDn(node: string): string;
}

export function ditPaths(baseDn: string): DitPaths {
  const serviceDn = `ou=virtualization,ou=services,${baseDn}`;
  const vmsDn = `ou=virtual machines,${serviceDn}`;
  const poolsDn = `ou=virtual machine pools,${serviceDn}`;
  const vmDn = (vm: string) => `sstVirtualMachine=${escapeDnValue(assertSafeName('VM name', vm))},${vmsDn}`;
  const poolDn = (pool: string) => `sstVirtualMachinePool=${escapeDnValue(assertSafeName('VM pool', pool))},${poolsDn}`;
  return {
    baseDn,
    serviceDn,
    vmsDn,
    poolsDn,
    nodesDn: `ou=nodes,${serviceDn}`,
    globalBackupDn: `ou=backup,ou=configuration,${serviceDn}`,
    vmDn,
    vmBackupDn: (vm) => `ou=backup,${vmDn(vm)}`,
    leafDn: (vm, leaf) => `ou=${escapeDnValue(assertLeafName(leaf))},ou=backup,${vmDn(vm)}`,
    poolDn,
    poolBackupDn: (pool) => `ou=backup,${poolDn(pool)}`,
    nodeDn: (node) => `sstNode=${escapeDnValue(assertSafeName('node', node))},ou=nodes,${serviceDn}`,
  };
}

export function assertLeafName(leaf: string): string {
  if (!isLeafName(leaf)) {
    throw new BackupError(`leaf ${JSON.stringify(leaf)} is not a UTC timestamp YYYYMMDDTHHMMSSZ`, ReturnCode.unsafeName);
  }
  return leaf;
}

/** RFC 4514 escaping of an attribute value inside a DN. */
export function escapeDnValue(value: string): string {
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const c = value.charAt(i);
    if (',+"\\<>;='.includes(c)) out += `\\${c}`;
    else if (c === '\0') out += '\\00';
    else if ((c === ' ' || c === '#') && i === 0) out += `\\${c}`;
    else if (c === ' ' && i === value.length - 1) out += '\\ ';
    else out += c;
  }
  return out;
}

/** One attribute-value assertion of an RDN, value unescaped. */
export interface Ava {
  attribute: string;
  value: string;
}

/**
 * Parses a DN string as a server returns it (RFC 4514: `\,`, `\XX` hex
 * escapes, multi-valued RDNs with `+`). Returns the RDNs leaf first; each
 * RDN is a list of AVAs.
 */
export function parseDn(dn: string): Ava[][] {
  const rdns: Ava[][] = [];
  let avas: Ava[] = [];
  let attribute = '';
  let bytes: number[] = [];
  let inValue = false;
  const flushAva = () => {
    avas.push({ attribute: attribute.trim(), value: Buffer.from(bytes).toString('utf8') });
    attribute = '';
    bytes = [];
    inValue = false;
  };
  const pushText = (s: string) => {
    for (const b of Buffer.from(s, 'utf8')) bytes.push(b);
  };
  for (let i = 0; i < dn.length; i++) {
    const c = dn.charAt(i);
    if (!inValue) {
      if (c === '=') inValue = true;
      else attribute += c;
      continue;
    }
    if (c === '\\') {
      const hex = dn.slice(i + 1, i + 3);
      if (/^[0-9a-fA-F]{2}$/.test(hex)) {
        bytes.push(parseInt(hex, 16));
        i += 2;
      } else if (i + 1 < dn.length) {
        pushText(dn.charAt(i + 1));
        i += 1;
      }
    } else if (c === '+') {
      flushAva();
    } else if (c === ',' || c === ';') {
      flushAva();
      rdns.push(avas);
      avas = [];
    } else {
      pushText(c);
    }
  }
  if (inValue || attribute.trim() !== '') {
    flushAva();
    rdns.push(avas);
  }
  return rdns;
}

/** The value of the first RDN (from the leaf up) whose attribute is `attribute`. */
export function rdnValue(dn: string, attribute: string): string | undefined {
  const a = attribute.toLowerCase();
  for (const rdn of parseDn(dn)) {
    for (const ava of rdn) if (ava.attribute.toLowerCase() === a) return ava.value;
  }
  return undefined;
}

/** The value of the leaf-most RDN (its first AVA). */
export function leafRdnValue(dn: string): string | undefined {
  return parseDn(dn)[0]?.[0]?.value;
}

/** Number of RDNs: sorts entries parent-first. */
export function dnDepth(dn: string): number {
  return parseDn(dn).length;
}

/** A DN in a canonical form for comparisons: attribute names lower-cased, values lower-cased, re-escaped. */
export function normalizeDn(dn: string): string {
  return parseDn(dn)
    .map((rdn) => rdn.map((a) => `${a.attribute.toLowerCase()}=${escapeDnValue(a.value.toLowerCase())}`).join('+'))
    .join(',');
}

/** True when `dn` lies at or below `ancestor`. */
export function isAtOrBelow(dn: string, ancestor: string): boolean {
  const d = normalizeDn(dn);
  const a = normalizeDn(ancestor);
  return d === a || d.endsWith(`,${a}`);
}
