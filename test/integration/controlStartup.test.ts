/**
 * The control daemon on a site of 1,000 VMs (real slapd, project config):
 * it starts, holds the site in memory, schedules the whole site in one
 * minute and drives every leaf to `snapshot`; the CLI process starts and
 * stops on SIGTERM; paged searches on one connection no longer collide.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import pino from 'pino';
import { DateTime } from 'luxon';
import { startSlapd, ldapSearch, type PrivateSlapd } from '../helpers/slapd.js';
import { SITE_VMS_DN, siteVmName, writeSiteLdif } from '../helpers/siteLdif.js';
import { connectDirectory } from '../../src/directory/connect.js';
import { LdapSession } from '../../src/directory/LdapSession.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { SyncReplChangeFeed } from '../../src/directory/SyncReplChangeFeed.js';
import { ControlDaemon } from '../../src/control/ControlDaemon.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';

const VMS = 1_000;
/** the sample tree's two VMs come on top */
const ALL = VMS + 2;
const CLI = path.resolve('bin/stoney-backup.js');

let tmp: string;
let slapd: PrivateSlapd;
let dir: LdapBackupDirectory;
const logger = pino({ level: process.env.STONEY_TEST_LOG ?? 'warn' });

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'stoney-control-startup-'));
  slapd = await startSlapd({ ldifFiles: [await writeSiteLdif(path.join(tmp, 'site.ldif'), VMS, 50)] });
  dir = await connectDirectory({ url: slapd.url, bindDn: slapd.bindDn, passwordFile: slapd.passwordFile, baseDn: slapd.baseDn });
}, 120_000);

afterAll(async () => {
  await dir?.close();
  await slapd?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

async function countLeaves(filter: string): Promise<number> {
  const ldif = await ldapSearch(slapd, SITE_VMS_DN, `(&(objectClass=sstProvisioning)${filter})`, ['1.1']);
  return ldif.split('\n').filter((l) => l.startsWith('dn:')).length;
}

describe('paged searches on one connection', () => {
  it('two at once both return every entry (slapd keeps one paged state per connection)', async () => {
    const session = new LdapSession({ url: slapd.url, bindDn: slapd.bindDn, passwordFile: slapd.passwordFile });
    try {
      const search = () => session.search(SITE_VMS_DN, { scope: 'one', filter: '(objectClass=sstVirtualizationVirtualMachine)', attributes: ['1.1'] });
      const results = await Promise.all([search(), search(), search()]);
      expect(results.map((r) => r.length)).toEqual([ALL, ALL, ALL]);
    } finally {
      await session.close();
    }
  });
});

describe('the control daemon with 1,000 VMs', () => {
  it('starts on the sync feed, schedules every VM due in one minute and drives all leaves to snapshot', async () => {
    const feed = new SyncReplChangeFeed({
      url: slapd.url, bindDn: slapd.bindDn, passwordFile: slapd.passwordFile, baseDn: slapd.baseDn,
      scope: {}, logger, stateFile: path.join(tmp, 'feed-control.json'), fullResyncIntervalMs: 0,
    });
    const control = new ControlDaemon({ directory: dir, feed, logger, policy: { ...defaultBatchPolicy, claimTimeoutMs: 600_000 }, zone: 'UTC', cronTick: false });
    await control.start();
    try {
      expect(control.known).toEqual({ vms: ALL, leaves: 0 });
      // The sample tree's global schedule: 03:00 every day.
      const created = await control.scheduleDue(DateTime.fromISO('2026-12-01T02:59:00Z'), DateTime.fromISO('2026-12-01T03:00:00Z'));
      expect(created).toHaveLength(ALL);
      expect(created).toContain(`${siteVmName(VMS - 1)}/20261201T030000Z`);
      const end = Date.now() + 120_000;
      while ((await countLeaves('(sstProvisioningMode=snapshot)')) < ALL && Date.now() < end) await new Promise((r) => setTimeout(r, 250));
      expect(await countLeaves('(sstProvisioningMode=snapshot)')).toBe(ALL);
      expect(await countLeaves('(ou=20261201T030000Z)')).toBe(ALL);
      // No node answers: nothing moves past snapshot, and a second planning of the same minute adds nothing.
      expect(await control.scheduleDue(DateTime.fromISO('2026-12-01T02:59:00Z'), DateTime.fromISO('2026-12-01T03:00:00Z'))).toEqual([]);
      expect(control.known.leaves).toBe(ALL);
    } finally {
      await control.stop();
    }
  }, 180_000);

  it('the control command starts and exits 0 on SIGTERM', async () => {
    await stat('dist/src/cli/main.js').catch(() => {
      throw new Error('dist/ is missing: run `npm run build` first');
    });
    const child = execa('node', [CLI, 'control'], {
      env: {
        STONEY_LDAP_URL: slapd.url,
        STONEY_LDAP_BIND_DN: slapd.bindDn,
        STONEY_LDAP_PASSWORD_FILE: slapd.passwordFile,
        STONEY_LDAP_BASE_DN: slapd.baseDn,
        STONEY_FEED_STATE_DIR: tmp,
        STONEY_TIMEZONE: 'UTC',
      },
      reject: false,
      buffer: true,
    });
    let out = '';
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
    });
    const end = Date.now() + 60_000;
    while (!out.includes('control daemon started') && child.exitCode === null && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
    expect(out).toContain('control daemon started');
    expect(out).toContain(`"vms":${ALL}`);
    child.kill('SIGTERM');
    const r = await child;
    expect({ code: r.exitCode, signal: r.signal }).toEqual({ code: 0, signal: undefined });
    expect(r.stdout).toContain('control daemon stopped');
  }, 90_000);

  it('the control command exits non-zero when it cannot read the site', async () => {
    const r = await execa('node', [CLI, 'control'], {
      env: {
        STONEY_LDAP_URL: slapd.url,
        STONEY_LDAP_BIND_DN: slapd.bindDn,
        STONEY_LDAP_PASSWORD_FILE: slapd.passwordFile,
        STONEY_LDAP_BASE_DN: 'o=nowhere,c=ch',
        STONEY_FEED_STATE_DIR: tmp,
      },
      reject: false,
      timeout: 60_000,
    });
    expect(r.timedOut).toBe(false);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/stoney-backup control: .*o=nowhere,c=ch/);
  }, 90_000);
});
