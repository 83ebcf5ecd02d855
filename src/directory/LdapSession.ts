import { readFile } from 'node:fs/promises';
import { Client, ResultCodeError, type Change, type Entry, type SearchOptions } from 'ldapts';
import { DirectoryError } from './DirectoryError.js';
import { ReturnCode } from '../domain/returnCodes.js';

export interface LdapSessionOptions {
  /** ldap://host:port or ldaps://host:port */
  url: string;
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

  constructor(private readonly options: LdapSessionOptions) {
    this.client = this.newClient();
  }

  get url(): string {
    return this.options.url;
  }

  private newClient(): Client {
    return new Client({
      url: this.options.url,
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
      const client = this.client;
      this.binding = (async () => {
        const password = await this.password();
        try {
          await client.bind(this.options.bindDn, password);
        } catch (err) {
          if (!(err instanceof ResultCodeError)) this.discardClient(client);
          throw DirectoryError.from(err, `bind as ${this.options.bindDn} to ${this.options.url}`, false);
        }
      })().finally(() => {
        this.binding = undefined;
      });
    }
    await this.binding;
  }

  /** After a connection failure, start over with a fresh client (no half-dead socket state). */
  private discardClient(client: Client): void {
    if (client !== this.client) return;
    this.client = this.newClient();
    client.unbind().catch(() => undefined);
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
        this.discardClient(client);
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
