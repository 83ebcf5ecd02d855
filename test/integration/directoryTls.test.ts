import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSlapd, type PrivateSlapd } from '../helpers/slapd.js';
import { recordingRelay, setUpSlapdTls, type SlapdTls } from '../helpers/tls.js';
import { connectDirectory } from '../../src/directory/connect.js';
import { createChangeFeed } from '../../src/directory/createChangeFeed.js';
import { DirectoryError } from '../../src/directory/DirectoryError.js';

/**
 * Reproduction 3 of issue #10: the directory session (daemons and CLI) used
 * STONEY_LDAP_STARTTLS and STONEY_LDAP_CA_FILE only for the change feed and
 * bound in clear text. Now every session takes the same TLS settings; a
 * relay that records what the client sends shows the password never crosses
 * the wire readable.
 */
let slapd: PrivateSlapd;
let t: SlapdTls;

beforeAll(async () => {
  slapd = await startSlapd();
  t = await setUpSlapdTls(slapd);
});
afterAll(async () => {
  await t?.close();
  await slapd?.stop();
});

const base = () => ({ bindDn: slapd.bindDn, passwordFile: slapd.passwordFile, baseDn: slapd.baseDn });

async function failure(p: Promise<unknown>): Promise<DirectoryError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(DirectoryError);
  return err as DirectoryError;
}

describe('the directory session and TLS', () => {
  it('sends the password readable over plain ldap:// (what the relay sees when it happens)', async () => {
    const relay = await recordingRelay(slapd.port);
    try {
      const dir = await connectDirectory({ ...base(), url: relay.url });
      await dir.listVms({});
      await dir.close();
      expect(relay.sent().includes(Buffer.from(slapd.password))).toBe(true);
    } finally {
      await relay.close();
    }
  });

  it('upgrades with StartTLS before the bind, checking the CA: the password never crosses readable', async () => {
    const relay = await recordingRelay(slapd.port);
    try {
      const dir = await connectDirectory({ ...base(), url: relay.url, startTls: true, caFile: t.goodCa });
      expect((await dir.listVms({})).length).toBeGreaterThan(0);
      await dir.close();
      const sent = relay.sent();
      expect(sent.includes(Buffer.from('1.3.6.1.4.1.1466.20037'))).toBe(true);
      expect(sent.includes(Buffer.from(slapd.password))).toBe(false);
      expect(sent.includes(Buffer.from(slapd.bindDn))).toBe(false);
    } finally {
      await relay.close();
    }
  });

  it('works over ldaps:// with a private CA given as STONEY_LDAP_CA_FILE (the system CAs do not know it: see below)', async () => {
    const dir = await connectDirectory({ ...base(), url: t.ldapsUrl, caFile: t.goodCa });
    expect((await dir.listVms({})).length).toBeGreaterThan(0);
    await dir.close();
  });

  it.each([
    ['StartTLS', () => ({ url: slapd.url, startTls: true })],
    ['ldaps://', () => ({ url: t.ldapsUrl })],
  ])('refuses a certificate from another CA over %s, with a clear error and no retry', async (_how, opts) => {
    const err = await failure(connectDirectory({ ...base(), ...opts(), caFile: t.wrongCa }));
    expect(err.retryable).toBe(false);
    expect(err.message).toMatch(/server certificate is not trusted/);
    expect(err.message).toContain(t.wrongCa);
    const noCa = await failure(connectDirectory({ ...base(), ...opts() }));
    expect(noCa.message).toMatch(/not trusted.*system CA \(set STONEY_LDAP_CA_FILE/);
  });

  it('refuses a certificate of the right CA that names another host', async () => {
    const err = await failure(connectDirectory({ ...base(), url: t.wrongNameUrl, caFile: t.goodCa }));
    expect(err.retryable).toBe(false);
    expect(err.message).toMatch(/ERR_TLS_CERT_ALTNAME_INVALID/);
  });

  it('refuses a plain ldap:// URL to another host before connecting, unless explicitly allowed', async () => {
    const url = 'ldap://ldap.invalid:389/';
    const err = await failure(connectDirectory({ ...base(), url }));
    expect(err.message).toMatch(/clear text.*STONEY_LDAP_ALLOW_PLAINTEXT=true/);
    expect(err.retryable).toBe(false);
    expect(() => createChangeFeed('sync', { ...base(), url, scope: {} }, undefined as never)).toThrow(/clear text/);
    // Allowed explicitly, it does try (and fails to resolve the .invalid name: a connection error, not the policy).
    const allowed = await failure(connectDirectory({ ...base(), url, allowPlaintext: true, connectTimeoutMs: 2_000 }));
    expect(allowed.message).not.toMatch(/clear text/);
  });
});
