import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/cli/config.js';
import { UsageError } from '../../src/domain/errors.js';
import { changeFeedStateFile, createChangeFeed } from '../../src/directory/createChangeFeed.js';
import { PollingChangeFeed } from '../../src/directory/PollingChangeFeed.js';
import { SyncReplChangeFeed } from '../../src/directory/SyncReplChangeFeed.js';

const env = {
  STONEY_LDAP_URL: 'ldap://127.0.0.1:3389/',
  STONEY_LDAP_BIND_DN: 'cn=admin,o=test',
  STONEY_LDAP_PASSWORD_FILE: '/etc/stoney-backup/ldap.password',
  STONEY_LDAP_BASE_DN: 'o=test',
};

describe('change feed configuration', () => {
  it('defaults to the sync feed with its state in /var/lib/stoney-backup, system CAs, no StartTLS', async () => {
    const c = await loadConfig(undefined, env);
    expect({ feed: c.changeFeed, dir: c.feedStateDir, ca: c.ldapCaFile, startTls: c.ldapStartTls })
      .toEqual({ feed: 'sync', dir: '/var/lib/stoney-backup', ca: undefined, startTls: false });
  });

  it('reads the keys and refuses values it cannot use', async () => {
    const c = await loadConfig(undefined, { ...env, STONEY_CHANGE_FEED: 'poll', STONEY_FEED_STATE_DIR: '/srv/state', STONEY_LDAP_CA_FILE: '/etc/ssl/ca.pem', STONEY_LDAP_STARTTLS: 'TRUE' });
    expect({ feed: c.changeFeed, dir: c.feedStateDir, ca: c.ldapCaFile, startTls: c.ldapStartTls })
      .toEqual({ feed: 'poll', dir: '/srv/state', ca: '/etc/ssl/ca.pem', startTls: true });
    for (const [key, value, extra] of [
      ['STONEY_CHANGE_FEED', 'push', {}],
      ['STONEY_FEED_STATE_DIR', 'relative/dir', {}],
      ['STONEY_LDAP_CA_FILE', 'ca.pem', {}],
      ['STONEY_LDAP_STARTTLS', 'yes', {}],
      ['STONEY_LDAP_STARTTLS', 'true', { STONEY_LDAP_URL: 'ldaps://ldap.example.com' }],
    ] as const) {
      await expect(loadConfig(undefined, { ...env, ...extra, [key]: value }), `${key}=${value}`).rejects.toBeInstanceOf(UsageError);
    }
  });

  it('creates the feed asked for, with one state file per scope', () => {
    const base = { url: env.STONEY_LDAP_URL, bindDn: 'cn=x', passwordFile: '/x', baseDn: 'o=test' };
    const scanner = { scanLeaves: async () => [] };
    expect(createChangeFeed('poll', { ...base, scope: {} }, scanner)).toBeInstanceOf(PollingChangeFeed);
    expect(createChangeFeed('sync', { ...base, scope: { node: 'n1' }, stateDir: '/s' }, scanner)).toBeInstanceOf(SyncReplChangeFeed);
    expect(changeFeedStateFile('/s', { node: 'node-01.example.com' })).toBe('/s/changefeed-node-node-01.example.com.json');
    expect(changeFeedStateFile('/s', {})).toBe('/s/changefeed-control.json');
  });
});
