import path from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { ldapAdd, ldapModifyConfig, LDIF_DIR, type PrivateSlapd } from './slapd.js';
import { connectDirectory } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';

export const BASE = 'o=stepping-stone,c=ch';
export const CONTROL_DN = `cn=stoney-backup-control,ou=service accounts,${BASE}`;
export const nodeAccountDn = (node: string): string => `cn=${node},ou=service accounts,${BASE}`;

/**
 * The shipped ACL (ldif/acl-example.ldif) on a private slapd, with its
 * service accounts: the control identity and node identities (members of
 * cn=stoney-backup-nodes). `extra`: more entries to add with them (LDIF).
 */
export async function loadShippedAcl(slapd: PrivateSlapd, accounts: { dn: string; cn: string; password: string }[], nodes: string[], extra: string[] = []): Promise<void> {
  await ldapModifyConfig(slapd, await readFile(path.join(LDIF_DIR, 'acl-example.ldif'), 'utf8'));
  const account = (a: { dn: string; cn: string; password: string }) =>
    [`dn: ${a.dn}`, 'objectClass: organizationalRole', 'objectClass: simpleSecurityObject', `cn: ${a.cn}`, `userPassword: ${a.password}`, ''].join('\n');
  await ldapAdd(slapd, [
    `dn: ou=service accounts,${BASE}\nobjectClass: organizationalUnit\nou: service accounts\n`,
    `dn: ou=groups,${BASE}\nobjectClass: organizationalUnit\nou: groups\n`,
    ...accounts.map(account),
    ...extra,
    `dn: cn=stoney-backup-nodes,ou=groups,${BASE}\nobjectClass: groupOfNames\ncn: stoney-backup-nodes\n${nodes.map((n) => `member: ${n}`).join('\n')}\n`,
  ].join('\n'));
}

/** The project's directory client bound as `dn` (its password in a private file, as the daemons read it). */
export async function bindAs(slapd: PrivateSlapd, dn: string, password: string): Promise<LdapBackupDirectory> {
  const file = passwordFileOf(slapd, dn);
  await writeFile(file, `${password}\n`, { mode: 0o600 });
  return connectDirectory({ url: slapd.url, bindDn: dn, passwordFile: file, baseDn: slapd.baseDn });
}

/** Where bindAs left the identity's password file. */
export function passwordFileOf(slapd: PrivateSlapd, dn: string): string {
  return path.join(slapd.dir, `${dn.replace(/[^A-Za-z0-9.-]/g, '_')}.pw`);
}
