import { describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import { ldapModifyConfig, type PrivateSlapd } from '../helpers/slapd.js';
import { useSlapdWithDirectory } from '../helpers/useSlapd.js';
import { connectDirectory } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { DirectoryError } from '../../src/directory/DirectoryError.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

let slapd: PrivateSlapd;
let dir: LdapBackupDirectory;

useSlapdWithDirectory((s) => ({ slapd, dir } = s));

describe('connection', () => {
  it('works again after a slapd restart, still bound (anonymous would see nothing and write nothing)', async () => {
    expect((await dir.listVms()).map((v) => v.name)).toEqual(['kvm-001', 'kvm-002']);
    await slapd.restart();
    // Reads: anonymous gets noSuchObject under this ACL, i.e. an empty list.
    expect((await dir.listVms()).map((v) => v.name)).toEqual(['kvm-001', 'kvm-002']);
    // Writes need the bind too.
    expect(await dir.createLeaf('kvm-001', '20210101T000000Z')).toBe(true);
    await slapd.restart();
    const leaves = await dir.listLeaves('kvm-001');
    expect(leaves.map((l) => l.leaf)).toEqual(['20210101T000000Z']);
    expect(await dir.casMode(leaves[0]!.dn, 'initialize', 'initialized')).toBe(true);
  });

  it('stays bound after slapd closed the idle connection (olcIdleTimeout)', async () => {
    await ldapModifyConfig(slapd, 'dn: cn=config\nchangetype: modify\nreplace: olcIdleTimeout\nolcIdleTimeout: 1\n');
    try {
      expect((await dir.listVms()).map((v) => v.name)).toEqual(['kvm-001', 'kvm-002']);
      await new Promise((r) => setTimeout(r, 3_000));
      expect((await dir.listVms()).map((v) => v.name)).toEqual(['kvm-001', 'kvm-002']);
      expect(await dir.createLeaf('kvm-001', '20210102T000000Z')).toBe(true);
    } finally {
      await ldapModifyConfig(slapd, 'dn: cn=config\nchangetype: modify\nreplace: olcIdleTimeout\nolcIdleTimeout: 3600\n');
    }
  });

  it('fails with a retryable DirectoryError while slapd is down, and recovers when it is back', async () => {
    await slapd.halt();
    try {
      const err = await dir.listVms().then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(DirectoryError);
      expect(err).toMatchObject({ code: ReturnCode.cannotConnectToBackend, retryable: true, ldapCode: undefined });
      const werr = await dir.createLeaf('kvm-002', '20210101T000000Z').then(() => undefined, (e: unknown) => e);
      expect(werr).toMatchObject({ retryable: true });
    } finally {
      await slapd.start();
    }
    expect((await dir.getVm('kvm-002'))?.name).toBe('kvm-002');
    expect(await dir.createLeaf('kvm-002', '20210101T000000Z')).toBe(true);
  });

  it('rejects wrong credentials at connect time, and trims the password file', async () => {
    const wrong = `${slapd.dir}/wrongpw`;
    await writeFile(wrong, 'not-the-password\n', { mode: 0o600 });
    await expect(connectDirectory({ url: slapd.url, bindDn: slapd.bindDn, passwordFile: wrong, baseDn: slapd.baseDn }))
      .rejects.toMatchObject({ ldapCode: 49 });
    const padded = `${slapd.dir}/paddedpw`;
    await writeFile(padded, `  ${slapd.password}\n\n`, { mode: 0o600 });
    const d = await connectDirectory({ url: slapd.url, bindDn: slapd.bindDn, passwordFile: padded, baseDn: slapd.baseDn });
    try {
      expect(await d.getVm('kvm-001')).toBeDefined();
    } finally {
      await d.close();
    }
    await expect(connectDirectory({ url: slapd.url, bindDn: slapd.bindDn, passwordFile: `${slapd.dir}/missing`, baseDn: slapd.baseDn }))
      .rejects.toMatchObject({ code: ReturnCode.missingConfigurationParameter });
  });
});
