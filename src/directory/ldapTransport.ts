import net from 'node:net';
import { readFile } from 'node:fs/promises';
import type tls from 'node:tls';
import { DirectoryError } from './DirectoryError.js';
import { ReturnCode } from '../domain/returnCodes.js';

/**
 * One transport policy for every directory session: the daemons' and the
 * CLI's reads and writes (LdapSession) and the change feed. The bind
 * password goes over TLS — ldaps://, or StartTLS before the bind — with the
 * server certificate checked against STONEY_LDAP_CA_FILE (else the system
 * CAs) and the URL's host name. A plain ldap:// URL is accepted only on the
 * loopback interface or when STONEY_LDAP_ALLOW_PLAINTEXT says so.
 */
export interface LdapTransportOptions {
  /** PEM file of the CA(s) that sign the server certificate; default: the system CAs */
  caFile?: string;
  /** upgrade an ldap:// connection with StartTLS before binding */
  startTls?: boolean;
  /** accept a plain ldap:// URL to a host other than loopback (credentials in clear text) */
  allowPlaintext?: boolean;
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  return net.isIPv4(h) && h.startsWith('127.');
}

/** Why this URL and these options would send the password in clear text, or undefined when they would not. */
export function plaintextRefusal(url: string, o: LdapTransportOptions): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return `${JSON.stringify(url)} is not an ldap:// or ldaps:// URL`;
  }
  if (u.protocol === 'ldaps:') return undefined;
  if (u.protocol !== 'ldap:') return `${url}: only ldap:// and ldaps:// are supported`;
  if (o.startTls || o.allowPlaintext || isLoopbackHost(u.hostname)) return undefined;
  return `${url} would send the bind password in clear text to ${u.hostname}: use ldaps://, STONEY_LDAP_STARTTLS=true, or set STONEY_LDAP_ALLOW_PLAINTEXT=true to accept that`;
}

export function assertTransportAllowed(url: string, o: LdapTransportOptions): void {
  const why = plaintextRefusal(url, o);
  if (why !== undefined) throw new DirectoryError(why, ReturnCode.unsupportedConfigurationParameter, undefined, { retryable: false });
}

export async function readCaFile(caFile: string | undefined): Promise<Buffer | undefined> {
  if (caFile === undefined) return undefined;
  try {
    return await readFile(caFile);
  } catch (err) {
    throw new DirectoryError(`cannot read the LDAP CA file ${caFile}: ${(err as Error).message}`, ReturnCode.missingConfigurationParameter, undefined, { retryable: false, cause: err });
  }
}

/** TLS client options for a host: certificate and host name verified (SNI only for names; IPs are checked against the SANs). */
export function tlsClientOptions(host: string, ca: Buffer | undefined): tls.ConnectionOptions {
  const h = host.replace(/^\[|\]$/g, '');
  return {
    host: h,
    ...(net.isIP(h) ? {} : { servername: h }),
    ...(ca ? { ca } : {}),
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
  };
}
