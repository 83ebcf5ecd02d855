import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configKeys, loadConfig, parseEnvFile, requireNodeName } from '../../src/cli/config.js';
import { UsageError } from '../../src/domain/errors.js';

const requiredEnv = {
  STONEY_LDAP_URL: 'ldap://127.0.0.1:3389/',
  STONEY_LDAP_BIND_DN: 'cn=admin,o=test',
  STONEY_LDAP_PASSWORD_FILE: '/etc/stoney-backup/ldap.password',
  STONEY_LDAP_BASE_DN: 'o=test',
};

let dir: string;
let n = 0;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'stoney-config-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function configFile(text: string): Promise<string> {
  n += 1;
  const file = path.join(dir, `config-${n}.env`);
  await writeFile(file, text);
  return file;
}

/** The UsageError a promise rejects with. */
async function usageErrorOf(p: Promise<unknown>): Promise<UsageError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof UsageError) return err;
    throw new Error(`expected a UsageError, got ${String(err)}`);
  }
  throw new Error('expected a UsageError, the promise resolved');
}

describe('loadConfig', () => {
  // toMatchObject: exact values for these fields, while new fields may be added to Config.
  it('fills every default from the required keys alone', async () => {
    expect(await loadConfig(undefined, { ...requiredEnv })).toMatchObject({
      ldap: { url: 'ldap://127.0.0.1:3389/', bindDn: 'cn=admin,o=test', passwordFile: '/etc/stoney-backup/ldap.password', baseDn: 'o=test' },
      nodeName: undefined,
      libvirtUri: 'qemu:///system',
      imageRoots: ['/var/virtualization'],
      logLevel: '',
      pollIntervalMs: 1000,
      policy: { mergeConcurrency: 1, claimTimeoutMs: 300_000, stepTimeoutMs: 21_600_000 },
      timeZone: undefined,
      concurrency: 4,
      configFile: undefined,
    });
  });

  it('reads every key', async () => {
    const config = await loadConfig(undefined, {
      ...requiredEnv,
      STONEY_LDAP_URL: 'ldaps://ldap.example.com',
      STONEY_NODE_NAME: 'node-01.example.com',
      STONEY_LIBVIRT_URI: 'qemu+ssh://root@node/system',
      STONEY_IMAGE_ROOTS: '/var/virtualization:/srv/images',
      STONEY_LOG_LEVEL: 'debug',
      STONEY_POLL_INTERVAL_MS: '250',
      STONEY_CLAIM_TIMEOUT_S: '90',
      STONEY_STEP_TIMEOUT_S: '7200',
      STONEY_MERGE_CONCURRENCY: '3',
      STONEY_STEP_CONCURRENCY: '8',
      STONEY_TIMEZONE: 'Europe/Zurich',
    });
    expect(config).toMatchObject({
      ldap: { url: 'ldaps://ldap.example.com', bindDn: 'cn=admin,o=test', passwordFile: '/etc/stoney-backup/ldap.password', baseDn: 'o=test' },
      nodeName: 'node-01.example.com',
      libvirtUri: 'qemu+ssh://root@node/system',
      imageRoots: ['/var/virtualization', '/srv/images'],
      logLevel: 'debug',
      pollIntervalMs: 250,
      policy: { mergeConcurrency: 3, claimTimeoutMs: 90_000, stepTimeoutMs: 7_200_000 },
      timeZone: 'Europe/Zurich',
      concurrency: 8,
      configFile: undefined,
    });
    expect(requireNodeName(config)).toBe('node-01.example.com');
  });

  it.each(Object.keys(requiredEnv))('names the missing required key %s', async (key) => {
    const env: Record<string, string> = { ...requiredEnv };
    delete env[key];
    const err = await usageErrorOf(loadConfig(undefined, env));
    expect(err.message).toContain(`${key} is not set`);
  });

  it('treats an empty required value as missing', async () => {
    const err = await usageErrorOf(loadConfig(undefined, { ...requiredEnv, STONEY_LDAP_BASE_DN: '' }));
    expect(err.message).toContain('STONEY_LDAP_BASE_DN is not set');
  });

  it('reads a config file, and the environment wins over it', async () => {
    const file = await configFile(
      [
        '# stoney-backup configuration',
        'STONEY_LDAP_URL=ldap://file.example.com',
        'STONEY_LDAP_BIND_DN="cn=file,o=test"',
        "STONEY_LDAP_PASSWORD_FILE='/etc/file.password'",
        'STONEY_LDAP_BASE_DN=o=file',
        'STONEY_NODE_NAME=node-file',
        'STONEY_CLAIM_TIMEOUT_S=120',
        '',
      ].join('\n'),
    );
    const config = await loadConfig(file, { STONEY_LDAP_URL: 'ldaps://env.example.com', STONEY_NODE_NAME: 'node-env', PATH: '/usr/bin' });
    expect(config.ldap).toEqual({ url: 'ldaps://env.example.com', bindDn: 'cn=file,o=test', passwordFile: '/etc/file.password', baseDn: 'o=file' });
    expect(config.nodeName).toBe('node-env');
    expect(config.policy.claimTimeoutMs).toBe(120_000);
    expect(config.configFile).toBe(file);
  });

  it('refuses an unknown key in the config file, naming it', async () => {
    const file = await configFile('STONEY_LDAP_URL=ldap://x\nSTONEY_LDAP_UR=ldap://typo\n');
    const err = await usageErrorOf(loadConfig(file, { ...requiredEnv }));
    expect(err.message).toContain(file);
    expect(err.message).toContain('unknown key STONEY_LDAP_UR ');
  });

  it('ignores unrelated keys in the environment', async () => {
    const config = await loadConfig(undefined, { ...requiredEnv, HOME: '/root', STONEY_UNKNOWN: 'x' });
    expect(config.ldap.url).toBe('ldap://127.0.0.1:3389/');
  });

  it('refuses a line that is not KEY=value, naming file and line', async () => {
    const file = await configFile('# ok\nSTONEY_LDAP_URL=ldap://x\nthis is not a setting\n');
    const err = await usageErrorOf(loadConfig(file, { ...requiredEnv }));
    expect(err.message).toBe(`${file}:3: expected KEY=value, got "this is not a setting"`);
  });

  it('reports a config file it cannot read', async () => {
    const missing = path.join(dir, 'does-not-exist.env');
    const err = await usageErrorOf(loadConfig(missing, { ...requiredEnv }));
    expect(err.message).toContain(`cannot read the configuration file ${missing}`);
  });

  it.each(['http://ldap.example.com', 'ldap.example.com', 'ldapi:///var/run/slapd/ldapi', 'ldaps://a ldapx://b', 'LDAP://x'])('refuses the LDAP URL %j', async (url) => {
    const err = await usageErrorOf(loadConfig(undefined, { ...requiredEnv, STONEY_LDAP_URL: url }));
    expect(err.message).toContain('STONEY_LDAP_URL');
    expect(err.message).toContain('is not an ldap:// or ldaps:// URL');
  });

  it.each([
    ['ldaps://ldap1.example.com ldaps://ldap2.example.com', ['ldaps://ldap1.example.com', 'ldaps://ldap2.example.com']],
    ['ldaps://ldap1.example.com,ldaps://ldap2.example.com', ['ldaps://ldap1.example.com', 'ldaps://ldap2.example.com']],
    [' ldap://127.0.0.1:3389/ ,  ldap://127.0.0.1:3390/ ', ['ldap://127.0.0.1:3389/', 'ldap://127.0.0.1:3390/']],
  ])('reads the providers of a replicated directory from %j, in order', async (value, urls) => {
    const config = await loadConfig(undefined, { ...requiredEnv, STONEY_LDAP_URL: value });
    expect(config.ldap.url).toBe(urls[0]);
    expect(config.ldap.urls).toEqual(urls);
  });

  it('reads the shipped deploy/stoney-backup.env.example, with its two providers', async () => {
    const config = await loadConfig(path.resolve('deploy/stoney-backup.env.example'), {});
    expect(config.ldap.urls).toEqual(['ldaps://ldapm.example.com', 'ldaps://ldaps.example.com']);
  });

  it('keeps a single URL as it was (no provider list)', async () => {
    const config = await loadConfig(undefined, { ...requiredEnv, STONEY_LDAP_URL: ' ldap://127.0.0.1:3389/ ' });
    expect(config.ldap.url).toBe('ldap://127.0.0.1:3389/');
    expect(config.ldap.urls).toBeUndefined();
  });

  it.each([
    ['ldaps://a.example.com ldaps://a.example.com', /names a provider twice/],
    ['ldaps://a.example.com ldap://b.example.com', /ldap:\/\/b\.example\.com would send the bind password in clear text/],
    [' , ', /names no URL|is not set/],
  ])('refuses the provider list %j', async (value, message) => {
    const err = await usageErrorOf(loadConfig(undefined, { ...requiredEnv, STONEY_LDAP_URL: value }));
    expect(err.message).toMatch(/^STONEY_LDAP_URL/);
    expect(err.message).toMatch(message);
  });

  it.each(['var/virtualization', '/var/virtualization:images', './images'])('refuses the relative image root in %j', async (roots) => {
    const err = await usageErrorOf(loadConfig(undefined, { ...requiredEnv, STONEY_IMAGE_ROOTS: roots }));
    expect(err.message).toMatch(/^STONEY_IMAGE_ROOTS: .* is not an absolute path$/);
  });

  it('skips empty entries in the image roots', async () => {
    const config = await loadConfig(undefined, { ...requiredEnv, STONEY_IMAGE_ROOTS: ':/a::/b:' });
    expect(config.imageRoots).toEqual(['/a', '/b']);
  });

  it('allows backups only in the original default roots unless STONEY_ALLOWED_ROOTS says otherwise', async () => {
    expect((await loadConfig(undefined, { ...requiredEnv })).allowedRoots).toEqual(['/var/backup/virtualization', '/var/virtualization/retain']);
    expect((await loadConfig(undefined, { ...requiredEnv, STONEY_ALLOWED_ROOTS: '/srv/backup:/srv/retain:/dev/shm' })).allowedRoots).toEqual(['/srv/backup', '/srv/retain', '/dev/shm']);
  });

  it.each(['/', 'srv/backup', '/srv/backup:retain', '/srv/..'])('refuses the allowed root in %j', async (roots) => {
    const err = await usageErrorOf(loadConfig(undefined, { ...requiredEnv, STONEY_ALLOWED_ROOTS: roots }));
    expect(err.message).toMatch(/^STONEY_ALLOWED_ROOTS: .* is not an absolute path below \/$/);
  });

  it.each([
    'ldap://ldap.example.com',
    'ldap://10.0.0.5:389/',
    'ldap://128.0.0.1/',
  ])('refuses the plain URL %s, which would send the password in clear text', async (url) => {
    const err = await usageErrorOf(loadConfig(undefined, { ...requiredEnv, STONEY_LDAP_URL: url }));
    expect(err.message).toMatch(/^STONEY_LDAP_URL: .* would send the bind password in clear text .*STONEY_LDAP_ALLOW_PLAINTEXT=true/);
  });

  it.each([
    [{ STONEY_LDAP_URL: 'ldap://ldap.example.com', STONEY_LDAP_STARTTLS: 'true' }, { startTls: true }],
    [{ STONEY_LDAP_URL: 'ldap://ldap.example.com', STONEY_LDAP_ALLOW_PLAINTEXT: 'true' }, { allowPlaintext: true }],
    [{ STONEY_LDAP_URL: 'ldaps://ldap.example.com', STONEY_LDAP_CA_FILE: '/etc/ssl/site-ca.pem' }, { caFile: '/etc/ssl/site-ca.pem' }],
    [{ STONEY_LDAP_URL: 'ldap://localhost:389/' }, {}],
    [{ STONEY_LDAP_URL: 'ldap://127.0.0.5/' }, {}],
    [{ STONEY_LDAP_URL: 'ldap://[::1]:389/' }, {}],
  ])('accepts %j and hands the same TLS settings to every directory connection', async (env, transport) => {
    const config = await loadConfig(undefined, { ...requiredEnv, ...env });
    expect(config.ldap).toEqual({ url: env.STONEY_LDAP_URL, bindDn: 'cn=admin,o=test', passwordFile: '/etc/stoney-backup/ldap.password', baseDn: 'o=test', ...transport });
  });

  it('refuses an STONEY_LDAP_ALLOW_PLAINTEXT that is neither true nor false', async () => {
    const err = await usageErrorOf(loadConfig(undefined, { ...requiredEnv, STONEY_LDAP_ALLOW_PLAINTEXT: 'yes' }));
    expect(err.message).toBe('STONEY_LDAP_ALLOW_PLAINTEXT: "yes" is neither true nor false');
  });

  it('turns the timeouts from seconds into milliseconds', async () => {
    const config = await loadConfig(undefined, { ...requiredEnv, STONEY_CLAIM_TIMEOUT_S: '1', STONEY_STEP_TIMEOUT_S: '86400', STONEY_RESTORE_DECISION_TIMEOUT_S: '600' });
    expect(config.policy).toEqual({ mergeConcurrency: 1, claimTimeoutMs: 1000, stepTimeoutMs: 86_400_000, restoreDecisionTimeoutMs: 600_000 });
    expect((await loadConfig(undefined, requiredEnv)).policy.restoreDecisionTimeoutMs).toBe(86_400_000);
  });

  it('reads the control lease in seconds (default 15 s, renewed every 3 s) and refuses a renewal above a third of it', async () => {
    expect((await loadConfig(undefined, { ...requiredEnv })).controlLease).toEqual({ durationMs: 15_000, renewMs: 3_000 });
    expect((await loadConfig(undefined, { ...requiredEnv, STONEY_CONTROL_LEASE_S: '30', STONEY_CONTROL_LEASE_RENEW_S: '10' })).controlLease).toEqual({ durationMs: 30_000, renewMs: 10_000 });
    const err = await usageErrorOf(loadConfig(undefined, { ...requiredEnv, STONEY_CONTROL_LEASE_S: '10', STONEY_CONTROL_LEASE_RENEW_S: '4' }));
    expect(err.message).toMatch(/^STONEY_CONTROL_LEASE_S \/ STONEY_CONTROL_LEASE_RENEW_S: .*three renew intervals/);
  });

  it.each([
    ['STONEY_CONTROL_LEASE_S', '0'],
    ['STONEY_CONTROL_LEASE_RENEW_S', '1.5'],
    ['STONEY_CLAIM_TIMEOUT_S', '0'],
    ['STONEY_STEP_TIMEOUT_S', '-5'],
    ['STONEY_STEP_TIMEOUT_S', '1.5'],
    ['STONEY_MERGE_CONCURRENCY', 'two'],
    ['STONEY_STEP_CONCURRENCY', '0'],
    ['STONEY_POLL_INTERVAL_MS', '1e3'],
  ])('refuses %s=%j as not a positive integer', async (key, value) => {
    const err = await usageErrorOf(loadConfig(undefined, { ...requiredEnv, [key]: value }));
    expect(err.message).toBe(`${key}: ${JSON.stringify(value)} is not a positive integer`);
  });

  it('says which key is missing for requireNodeName', async () => {
    const config = await loadConfig(undefined, { ...requiredEnv });
    expect(() => requireNodeName(config)).toThrow(UsageError);
    expect(() => requireNodeName(config)).toThrow(/STONEY_NODE_NAME/);
  });

  it('documents every key it reads', () => {
    expect(Object.keys(configKeys)).toEqual(expect.arrayContaining([
      'STONEY_CLAIM_TIMEOUT_S',
      'STONEY_CONTROL_LEASE_S',
      'STONEY_CONTROL_LEASE_RENEW_S',
      'STONEY_IMAGE_ROOTS',
      'STONEY_ALLOWED_ROOTS',
      'STONEY_LDAP_ALLOW_PLAINTEXT',
      'STONEY_LDAP_CA_FILE',
      'STONEY_LDAP_STARTTLS',
      'STONEY_LDAP_BASE_DN',
      'STONEY_LDAP_BIND_DN',
      'STONEY_LDAP_PASSWORD_FILE',
      'STONEY_LDAP_URL',
      'STONEY_LIBVIRT_URI',
      'STONEY_LOG_LEVEL',
      'STONEY_MERGE_CONCURRENCY',
      'STONEY_NODE_NAME',
      'STONEY_POLL_INTERVAL_MS',
      'STONEY_STEP_CONCURRENCY',
      'STONEY_STEP_TIMEOUT_S',
      'STONEY_TIMEZONE',
    ]));
  });
});

describe('parseEnvFile', () => {
  it('reads KEY=value lines, skipping comments and blank lines', () => {
    const text = ['# comment', '', '   # indented comment', 'A=1', '  B = two words  ', 'export C=3', 'D=', 'E=a=b=c', 'F=#not a comment'].join('\n');
    expect(parseEnvFile(text, 'x.env')).toEqual({ A: '1', B: 'two words', C: '3', D: '', E: 'a=b=c', F: '#not a comment' });
  });

  it('strips one pair of matching quotes', () => {
    const text = ['A="double quoted"', "B='single quoted'", 'C="mixed\'', `D="'nested'"`, 'E=""', 'F=say "hi"'].join('\n');
    expect(parseEnvFile(text, 'x.env')).toEqual({ A: 'double quoted', B: 'single quoted', C: `"mixed'`, D: "'nested'", E: '', F: 'say "hi"' });
  });

  it('accepts CRLF line endings', () => {
    expect(parseEnvFile('A=1\r\nB="2"\r\n', 'x.env')).toEqual({ A: '1', B: '2' });
  });

  it('lets a later line win', () => {
    expect(parseEnvFile('A=1\nA=2\n', 'x.env')).toEqual({ A: '2' });
  });

  it.each([
    ['lower-case key', 'stoney_ldap_url=x', 1],
    ['no equals sign', 'A=1\nSTONEY_LDAP_URL', 2],
    ['key starting with a digit', '\n\n1A=x', 3],
    ['key with a dash', 'A-B=x', 1],
  ])('refuses a %s with file and line number', (_what, text, line) => {
    expect(() => parseEnvFile(text, '/etc/stoney.env')).toThrow(UsageError);
    expect(() => parseEnvFile(text, '/etc/stoney.env')).toThrow(`/etc/stoney.env:${line}: expected KEY=value`);
  });

  it('returns nothing for an empty file', () => {
    expect(parseEnvFile('', 'x.env')).toEqual({});
    expect(parseEnvFile('\n\n# only comments\n', 'x.env')).toEqual({});
  });
});
