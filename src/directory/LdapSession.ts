import { readFile } from 'node:fs/promises';
import { Client, ResultCodeError, type Change, type Entry, type SearchOptions } from 'ldapts';
import { DirectoryError } from './DirectoryError.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { assertTransportAllowed, readCaFile, tlsClientOptions, type LdapTransportOptions } from './ldapTransport.js';
import { providerUrls, type ProviderUrlOptions } from './providerUrls.js';

export interface LdapSessionOptions extends LdapTransportOptions, ProviderUrlOptions {
  bindDn: string;
  /** File holding the bind password (trimmed); read again on every (re)bind, so rotation works. */
  passwordFile?: string;
  /** The password itself, when there is no file (tests). */
  password?: string;
  /** Per-operation timeout, ms (default 30 000). */
  timeoutMs?: number;
  /** TCP connect timeout, ms (default 5 000). */
  connectTimeoutMs?: number;
}

/**
 * One authenticated LDAP connection that stays authenticated.
 *
 * ldapts reconnects transparently after the server closed the connection
 * (idle timeout, restart), but without a replayed bind that new connection is
 * anonymous and searches silently return less. So before every operation the
 * session checks `isBound` and binds (once, shared by concurrent callers) if
 * needed; `autoRebind` is on as a second line. Reads are retried once on a
 * connection failure; writes are not (the first attempt may have been
 * applied), they fail with a retryable DirectoryError.
 *
 * With several provider URLs (a replicated directory) a connection failure
 * moves the session to the next provider: the bind tries each provider once
 * before it gives up, and the read retried after a failure goes to the next
 * one. A write is still not repeated, but the next operation (e.g. the
 * caller's retry) goes to a provider that answers.
 */
export class LdapSession {
  private client: Client;
  private binding: Promise<void> | undefined;
  private closed = false;
  /**
   * The tail of the paged searches on this connection. slapd keeps ONE
   * paged-results state per connection: a second paged search started while
   * another is between pages invalidates the first one's cookie (err=2 or
   * err=53). So paged searches run one after the other; base searches and
   * writes do not page and still run alongside.
   */
  private pagedTail: Promise<unknown> = Promise.resolve();

  /** the CA of caFile, read at the first bind */
  private ca: Buffer | undefined;
  private caRead = false;
  /** the providers, and the one this session talks to now */
  private readonly urls: string[];
  private current = 0;

  constructor(private readonly options: LdapSessionOptions) {
    this.urls = providerUrls(options);
    // Refused before any connection: the password must never leave in clear text by accident.
    for (const url of this.urls) assertTransportAllowed(url, options);
    this.client = this.newClient();
  }

  /** The provider the session uses now. */
  get url(): string {
    return this.urls[this.current] as string;
  }

  private get secure(): boolean {
    return this.url.startsWith('ldaps://');
  }

  private newClient(): Client {
    const host = new URL(this.url).hostname;
    return new Client({
      url: this.url,
      // ldaps:// only: for StartTLS the connection starts plain (ldapts would otherwise speak TLS at once).
      ...(this.secure ? { tlsOptions: tlsClientOptions(host, this.ca) } : {}),
      timeout: this.options.timeoutMs ?? 30_000,
      connectTimeout: this.options.connectTimeoutMs ?? 5_000,
      strictDN: false,
      autoRebind: true,
    });
  }

  private async password(): Promise<string> {
    if (this.options.passwordFile !== undefined) {
      try {
        return (await readFile(this.options.passwordFile, 'utf8')).trim();
      } catch (err) {
        throw new DirectoryError(
          `cannot read the LDAP password file ${this.options.passwordFile}: ${err instanceof Error ? err.message : String(err)}`,
          ReturnCode.missingConfigurationParameter,
          undefined,
          { retryable: false, cause: err },
        );
      }
    }
    if (this.options.password !== undefined) return this.options.password;
    throw new DirectoryError('no LDAP password (passwordFile) configured', ReturnCode.missingConfigurationParameter, undefined);
  }

  /** Binds now (fails fast on bad credentials); later binds happen on demand. */
  async bind(): Promise<void> {
    if (this.closed) throw new DirectoryError('LDAP session is closed', ReturnCode.cannotConnectToBackend, undefined);
    if (this.client.isBound) return;
    if (!this.binding) {
      this.binding = (async () => {
        const password = await this.password();
        if (!this.caRead) {
          this.ca = await readCaFile(this.options.caFile);
          this.caRead = true;
        }
        // Each provider once, starting with the current one; a refusal (bad password, TLS) is not a lost connection.
        for (let tried = 1; ; tried++) {
          try {
            await this.bindCurrent(password);
            return;
          } catch (err) {
            if (err instanceof DirectoryError && !err.retryable) throw err;
            if (tried >= this.urls.length) throw err;
          }
        }
      })().finally(() => {
        this.binding = undefined;
      });
    }
    await this.binding;
  }

  private async bindCurrent(password: string): Promise<void> {
    if (this.secure || this.options.startTls) {
      // A fresh connection for every bind with TLS: StartTLS must come first on it, and
      // ldapts cannot say whether a reconnected socket was upgraded.
      this.discardClient(this.client);
    }
    const client = this.client;
    const url = this.url;
    try {
      if (this.options.startTls) await client.startTLS(tlsClientOptions(new URL(url).hostname, this.ca));
      await client.bind(this.options.bindDn, password);
    } catch (err) {
      const e = this.describeTlsError(err) ?? DirectoryError.from(err, `bind as ${this.options.bindDn} to ${url}`, false);
      // Lost connection or a provider saying busy/unavailable: the next provider may answer.
      if (e.retryable) this.failOver(client);
      throw e;
    }
  }

  /** A certificate the CA file (or system CAs) or the host name does not match: a configuration fault, not retried. */
  private describeTlsError(err: unknown): DirectoryError | undefined {
    const code = (err as { code?: unknown } | undefined)?.code;
    if (typeof code !== 'string' || !/^(UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|CERT_|ERR_TLS_CERT_ALTNAME|HOSTNAME_MISMATCH|ERR_SSL_)/.test(code)) return undefined;
    return new DirectoryError(
      `TLS to ${this.url}: the server certificate is not trusted (${code}: ${(err as Error).message}); it must be signed by ${
        this.options.caFile ? `a CA in ${this.options.caFile}` : 'a system CA (set STONEY_LDAP_CA_FILE for a private CA)'
      } and name the host of the URL`,
      ReturnCode.cannotConnectToBackend,
      undefined,
      { retryable: false, cause: err },
    );
  }

  /** Start over with a fresh client (no half-dead socket state). */
  private discardClient(client: Client): void {
    if (client !== this.client) return;
    this.client = this.newClient();
    client.unbind().catch(() => undefined);
  }

  /** After a connection failure: a fresh client, on the next provider when there are several. */
  private failOver(client: Client): void {
    if (client !== this.client) return;
    this.current = (this.current + 1) % this.urls.length;
    this.discardClient(client);
  }

  private async run<T>(what: string, write: boolean, op: (c: Client) => Promise<T>): Promise<T> {
    const attempts = write ? 1 : 2;
    let lastError: unknown;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      await this.bind();
      const client = this.client;
      try {
        return await op(client);
      } catch (err) {
        if (err instanceof ResultCodeError) throw err;
        lastError = err;
        this.failOver(client);
      }
    }
    throw DirectoryError.from(lastError, what, write);
  }

  /**
   * Search; ResultCodeErrors (e.g. NoSuchObjectError) pass through unchanged
   * for the caller to interpret. One-level and subtree searches are paged, so
   * a server-side size limit for non-root identities (slapd's default is
   * 500) does not cut a listing short.
   */
  async search(baseDn: string, options: SearchOptions): Promise<Entry[]> {
    const paged = options.scope !== undefined && options.scope !== 'base' ? { pageSize: 500 } : undefined;
    const search = () => this.run(`search ${baseDn}`, false, async (c) =>
      (await c.search(baseDn, { timeLimit: 0, ...(paged ? { paged } : {}), ...options })).searchEntries);
    if (!paged) return search();
    const result = this.pagedTail.then(search, search);
    this.pagedTail = result.catch(() => undefined);
    return result;
  }

  async add(dn: string, attributes: Record<string, string[] | string>): Promise<void> {
    await this.run(`add ${dn}`, true, (c) => c.add(dn, attributes));
  }

  async modify(dn: string, changes: Change[]): Promise<void> {
    await this.run(`modify ${dn}`, true, (c) => c.modify(dn, changes));
  }

  async del(dn: string): Promise<void> {
    await this.run(`delete ${dn}`, true, (c) => c.del(dn));
  }

  async close(): Promise<void> {
    this.closed = true;
    try {
      await this.client.unbind();
    } catch {
      // already gone
    }
  }
}
