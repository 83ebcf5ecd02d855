import { LdapBackupDirectory } from './LdapBackupDirectory.js';
import { LdapSession } from './LdapSession.js';
import type { LdapTransportOptions } from './ldapTransport.js';
import type { ProviderUrlOptions } from './providerUrls.js';

/**
 * How to reach the directory: what the daemons' and the CLI's configuration
 * holds (TLS: see ldapTransport.ts; several providers: see providerUrls.ts).
 */
export interface DirectoryConnectionOptions extends LdapTransportOptions, ProviderUrlOptions {
  bindDn: string;
  /** File holding the bind password; surrounding whitespace is trimmed. */
  passwordFile: string;
  /** The site's suffix, e.g. o=stepping-stone,c=ch */
  baseDn: string;
  /** Per-operation timeout, ms (default 30 000). */
  timeoutMs?: number;
  /** TCP connect timeout, ms (default 5 000). */
  connectTimeoutMs?: number;
}

/** An authenticated session (bound once now, so bad credentials fail here). */
export async function openLdapSession(options: Omit<DirectoryConnectionOptions, 'baseDn'>): Promise<LdapSession> {
  const session = new LdapSession(options);
  try {
    await session.bind();
  } catch (err) {
    await session.close();
    throw err;
  }
  return session;
}

/** The BackupDirectory of a site; close() it when done. */
export async function connectDirectory(options: DirectoryConnectionOptions): Promise<LdapBackupDirectory> {
  return new LdapBackupDirectory(await openLdapSession(options), options.baseDn);
}
