import net from 'node:net';
import tls from 'node:tls';
import { readFile } from 'node:fs/promises';
import { BerReader, BindRequest, ExtendedRequest, FilterParser, SearchEntry, SearchRequest, UnbindRequest } from 'ldapts';

/** What ldapts's request classes share (its Message base class is not exported). */
interface OutgoingMessage {
  messageId: number;
  write(): Buffer;
}
import { ReturnCode } from '../domain/returnCodes.js';
import { DirectoryError } from './DirectoryError.js';
import { LdapMessageFramer, LdapOp, readLdapResult, type LdapMessage, type LdapResult } from './ldapMessageFraming.js';
import { SyncOid, SyncRequestControl, type SyncRequestMode } from './syncRequestControl.js';
import { decodeSyncDone, decodeSyncInfo, decodeSyncState, type SyncDoneValue, type SyncInfoValue, type SyncStateValue } from './syncMessages.js';

const START_TLS_OID = '1.3.6.1.4.1.1466.20037';
const WHO_AM_I_OID = '1.3.6.1.4.1.4203.1.11.3';
/** Unsolicited Notice of Disconnection (RFC 4511 §4.4.1): the server is about to close. */
const NOTICE_OF_DISCONNECTION_OID = '1.3.6.1.4.1.1466.20036';

export interface SyncReplConnectionOptions {
  /** ldap://host[:port] or ldaps://host[:port] */
  url: string;
  bindDn: string;
  /** File holding the bind password (trimmed); read again on every connect, so rotation works. */
  passwordFile?: string;
  /** The password itself, when there is no file (tests). */
  password?: string;
  /** PEM file of the CA(s) that sign the server certificate; default: Node's bundled/system CAs. */
  caFile?: string;
  /** Upgrade an ldap:// connection with StartTLS before binding. Ignored for ldaps://. */
  startTls?: boolean;
  /** TCP (and TLS handshake) connect timeout, ms (default 5 000). */
  connectTimeoutMs?: number;
  /** Timeout of bind, StartTLS and WhoAmI, ms (default 10 000). */
  operationTimeoutMs?: number;
  /** TCP keepalive probe delay, ms (default 10 000); 0 turns keepalive off. */
  keepAliveMs?: number;
}

/** What a sync search asks for. */
export interface SyncSearch {
  baseDn: string;
  scope: 'base' | 'one' | 'sub';
  filter: string;
  attributes: string[];
  mode: SyncRequestMode;
  cookie: Buffer | undefined;
}

/** A SearchResultEntry of a sync search: DN, requested attributes (names lower-cased) and its Sync State. */
export interface SyncEntry {
  dn: string;
  attributes: Map<string, string[]>;
  sync: SyncStateValue;
}

/** Receives the messages of one sync search, in the order the server sent them. */
export interface SyncHandler {
  entry(e: SyncEntry): void;
  info(i: SyncInfoValue): void;
  /** The search ended (refreshOnly done, or the server ended a persist search, e.g. with e-syncRefreshRequired). */
  done(result: LdapResult, done: SyncDoneValue): void;
}

interface PendingRequest {
  resolve: (m: LdapMessage) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** Node's codes for a certificate it would not accept. */
const certificateErrorCodes = /^(UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|CERT_|ERR_TLS_CERT_ALTNAME|HOSTNAME_MISMATCH|ERR_SSL_)/;

interface Endpoint {
  secure: boolean;
  host: string;
  port: number;
}

function parseUrl(url: string): Endpoint {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new DirectoryError(`${JSON.stringify(url)} is not an ldap:// or ldaps:// URL`, ReturnCode.unsupportedConfigurationParameter, undefined);
  }
  if (u.protocol !== 'ldap:' && u.protocol !== 'ldaps:') {
    throw new DirectoryError(`${url}: only ldap:// and ldaps:// are supported by the sync change feed`, ReturnCode.unsupportedConfigurationParameter, undefined);
  }
  const secure = u.protocol === 'ldaps:';
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1') || 'localhost';
  return { secure, host, port: u.port ? Number(u.port) : secure ? 636 : 389 };
}

/**
 * One connection to a syncrepl provider on its own socket: connect (TLS,
 * StartTLS), bind, run one sync search and hand every message of it to a
 * handler, plus no-op WhoAmI requests with a timeout to notice a peer that
 * vanished without a TCP reset. It frames LDAP messages itself (ldapts 8
 * cannot read IntermediateResponse and drops unknown controls) and uses
 * ldapts only to encode requests and to decode entries.
 *
 * A connection is used once: after any failure it is closed and `closed`
 * resolves with the reason; the owner opens a new one.
 */
export class SyncReplConnection {
  private readonly framer = new LdapMessageFramer();
  private readonly pending = new Map<number, PendingRequest>();
  private nextId = 1;
  private socket: net.Socket;
  private searchId: number | undefined;
  private handler: SyncHandler | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private closeReason: Error | undefined;
  private isClosed = false;
  /** performance.now() of the last bytes received: proof that the peer is alive */
  private lastDataAt = performance.now();
  private resolveClosed!: (reason: Error | undefined) => void;
  /** Resolves once the socket is gone: with the error that ended it, or undefined after close(). */
  readonly closed: Promise<Error | undefined>;

  private constructor(
    private readonly options: SyncReplConnectionOptions,
    socket: net.Socket,
  ) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.socket = socket;
    this.attach(socket);
  }

  get url(): string {
    return this.options.url;
  }

  /** Connects, upgrades (ldaps:// or StartTLS) and binds. Rejects with a DirectoryError; `retryable: false` for configuration faults. */
  static async open(options: SyncReplConnectionOptions): Promise<SyncReplConnection> {
    const endpoint = parseUrl(options.url);
    const [password, ca] = await Promise.all([readPassword(options), readCa(options.caFile)]);
    const connectTimeoutMs = options.connectTimeoutMs ?? 5_000;
    const socket = await connectSocket(options, endpoint, ca, connectTimeoutMs);
    const conn = new SyncReplConnection(options, socket);
    try {
      if (!endpoint.secure && options.startTls) await conn.startTls(endpoint, ca, connectTimeoutMs);
      await conn.bind(password);
      return conn;
    } catch (err) {
      conn.destroy(err instanceof Error ? err : new Error(String(err)));
      throw err;
    }
  }

  private attach(socket: net.Socket): void {
    socket.on('data', (data: Buffer) => this.onData(data));
    socket.on('error', (err) => this.destroy(describeSocketError(this.options, err)));
    socket.on('close', () => this.destroy(new DirectoryError(`${this.options.url}: connection closed by the server`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true })));
  }

  private onData(data: Buffer): void {
    this.lastDataAt = performance.now();
    let messages: LdapMessage[];
    try {
      messages = this.framer.push(data);
    } catch (err) {
      this.destroy(new DirectoryError(`${this.options.url}: not an LDAP answer: ${(err as Error).message}`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true, cause: err }));
      return;
    }
    for (const m of messages) {
      if (this.isClosed) return;
      try {
        this.dispatch(m);
      } catch (err) {
        this.destroy(new DirectoryError(`${this.options.url}: cannot read message ${m.messageId} (op 0x${m.opTag.toString(16)}): ${(err as Error).message}`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true, cause: err }));
        return;
      }
    }
  }

  private dispatch(m: LdapMessage): void {
    if (m.messageId === 0) {
      // Unsolicited notification: only the Notice of Disconnection exists in practice.
      const r = new BerReader(m.op);
      const result = readLdapResult(r);
      const oid = r.remain > 0 && r.peek() === 0x8a ? r.readString(0x8a) : undefined;
      const what = oid === NOTICE_OF_DISCONNECTION_OID ? 'notice of disconnection' : `unsolicited notification ${oid ?? ''}`;
      this.destroy(new DirectoryError(`${this.options.url}: ${what}: ${result.diagnosticMessage} (LDAP result ${result.resultCode})`, ReturnCode.cannotConnectToBackend, result.resultCode, { retryable: true }));
      return;
    }
    if (m.messageId === this.searchId && this.handler) {
      this.dispatchSearch(m, this.handler);
      return;
    }
    const p = this.pending.get(m.messageId);
    if (!p) return; // e.g. a late WhoAmI answer after its timeout: nothing waits for it
    this.pending.delete(m.messageId);
    clearTimeout(p.timer);
    p.resolve(m);
  }

  private dispatchSearch(m: LdapMessage, handler: SyncHandler): void {
    switch (m.opTag) {
      case LdapOp.searchResultEntry: {
        const control = m.controls.find((c) => c.type === SyncOid.state);
        if (!control?.value) throw new Error('search entry without a Sync State control');
        const entry = new SearchEntry({ messageId: m.messageId });
        entry.parseMessage(new BerReader(m.op));
        const attributes = new Map<string, string[]>();
        for (const a of entry.attributes) {
          attributes.set(a.type.toLowerCase(), a.values.map((v) => (Buffer.isBuffer(v) ? v.toString('utf8') : v)));
        }
        handler.entry({ dn: entry.name, attributes, sync: decodeSyncState(control.value) });
        return;
      }
      case LdapOp.intermediateResponse: {
        const r = new BerReader(m.op);
        const name = r.remain > 0 && r.peek() === 0x80 ? r.readString(0x80) : undefined;
        const value = r.remain > 0 && r.peek() === 0x81 ? r.readString(0x81, true) : undefined;
        if (name !== SyncOid.info || !value) return; // not ours; RFC 4511 lets a client ignore it
        handler.info(decodeSyncInfo(value));
        return;
      }
      case LdapOp.searchResultDone: {
        const result = readLdapResult(new BerReader(m.op));
        const control = m.controls.find((c) => c.type === SyncOid.done);
        this.searchId = undefined;
        this.handler = undefined;
        handler.done(result, decodeSyncDone(control?.value));
        return;
      }
      default:
        return; // search references: the feed follows no referrals
    }
  }

  private send(message: OutgoingMessage): void {
    if (this.isClosed) throw this.closeReason ?? new Error('connection closed');
    this.socket.write(message.write());
  }

  private request(message: OutgoingMessage, what: string, timeoutMs = this.options.operationTimeoutMs ?? 10_000): Promise<LdapMessage> {
    return new Promise((resolve, reject) => {
      if (this.isClosed) {
        reject(this.closeReason ?? new Error('connection closed'));
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(message.messageId);
        const err = new DirectoryError(`${this.options.url}: no answer to ${what} within ${timeoutMs} ms`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true });
        reject(err);
        this.destroy(err);
      }, timeoutMs);
      this.pending.set(message.messageId, { resolve, reject, timer });
      try {
        this.send(message);
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(message.messageId);
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  private async startTls(endpoint: Endpoint, ca: Buffer | undefined, timeoutMs: number): Promise<void> {
    const answer = await this.request(new ExtendedRequest({ messageId: this.nextId++, oid: START_TLS_OID }), 'StartTLS');
    const result = readLdapResult(new BerReader(answer.op));
    if (result.resultCode !== 0) {
      throw new DirectoryError(
        `${this.options.url}: the server refused StartTLS: ${result.diagnosticMessage || 'no reason given'} (LDAP result ${result.resultCode}); configure TLS on the server or use ldaps://`,
        ReturnCode.cannotConnectToBackend,
        result.resultCode,
        { retryable: false },
      );
    }
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('error');
    plain.removeAllListeners('close');
    // Errors of the plain socket during the handshake surface through the TLS socket.
    plain.on('error', () => undefined);
    const secure = await handshake(this.options, endpoint, ca, timeoutMs, { socket: plain });
    this.socket = secure;
    this.attach(secure);
  }

  private async bind(password: string): Promise<void> {
    const answer = await this.request(new BindRequest({ messageId: this.nextId++, dn: this.options.bindDn, password }), `bind as ${this.options.bindDn}`);
    const result = readLdapResult(new BerReader(answer.op));
    if (result.resultCode !== 0) {
      const hint = result.resultCode === 49 ? ' (invalid credentials: check the bind DN and the password file)' : '';
      throw new DirectoryError(
        `bind as ${this.options.bindDn} to ${this.options.url}: ${result.diagnosticMessage || 'refused'} (LDAP result ${result.resultCode})${hint}`,
        ReturnCode.cannotConnectToBackend,
        result.resultCode,
        // Credentials and confidentiality requirements do not fix themselves; busy/unavailable do.
        { retryable: result.resultCode === 51 || result.resultCode === 52 },
      );
    }
  }

  /** Starts the sync search; every message of it goes to `handler` until `done` or the connection ends. */
  startSync(search: SyncSearch, handler: SyncHandler): void {
    if (this.searchId !== undefined) throw new Error('a sync search is already running on this connection');
    const messageId = this.nextId++;
    const request = new SearchRequest({
      messageId,
      baseDN: search.baseDn,
      scope: search.scope,
      filter: FilterParser.parseString(search.filter),
      attributes: search.attributes,
      // A time limit would end the persist phase; sizeLimit 0 = the server's limit for this identity.
      timeLimit: 0,
      sizeLimit: 0,
      controls: [new SyncRequestControl(search.mode, search.cookie)],
    });
    this.searchId = messageId;
    this.handler = handler;
    this.send(request);
  }

  /**
   * Every `intervalMs` without traffic, sends a WhoAmI; if neither its
   * answer nor anything else arrives within `timeoutMs`, closes the
   * connection. An idle persist search carries no traffic, so without this a
   * peer that vanished without a TCP reset would go unnoticed. Any data
   * counts as a sign of life: behind a long refresh the answer may be late.
   */
  startHeartbeat(intervalMs: number, timeoutMs: number): void {
    if (this.heartbeat || intervalMs <= 0) return;
    let probing = false;
    this.heartbeat = setInterval(() => {
      const sentAt = performance.now();
      if (probing || this.isClosed || sentAt - this.lastDataAt < intervalMs) return;
      probing = true;
      const messageId = this.nextId++;
      const timer = setTimeout(() => {
        probing = false;
        if (!this.pending.delete(messageId) || this.lastDataAt > sentAt) return;
        this.destroy(new DirectoryError(`${this.options.url}: no answer to the WhoAmI heartbeat within ${timeoutMs} ms; the connection is dead`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true }));
      }, timeoutMs);
      timer.unref();
      this.pending.set(messageId, { resolve: () => (probing = false), reject: () => (probing = false), timer });
      try {
        this.send(new ExtendedRequest({ messageId, oid: WHO_AM_I_OID }));
      } catch {
        // closed meanwhile: destroy() has rejected the pending probe
      }
    }, intervalMs);
    this.heartbeat.unref();
  }

  /** Runs one WhoAmI now; resolves with the authorization identity (e.g. "dn:cn=admin,…"). */
  async whoAmI(timeoutMs?: number): Promise<string> {
    const answer = await this.request(new ExtendedRequest({ messageId: this.nextId++, oid: WHO_AM_I_OID }), 'WhoAmI', timeoutMs);
    const r = new BerReader(answer.op);
    readLdapResult(r);
    return r.remain > 0 && r.peek() === 0x8b ? (r.readString(0x8b) ?? '') : '';
  }

  /** Unbinds and closes; resolves when the socket is gone. */
  async close(): Promise<void> {
    if (!this.isClosed) {
      try {
        this.socket.write(new UnbindRequest({ messageId: this.nextId++ }).write());
      } catch {
        // already broken: just close
      }
      this.socket.end();
      const timer = setTimeout(() => this.socket.destroy(), 1_000);
      timer.unref();
      this.destroy(undefined);
    }
    await this.closed;
  }

  /** Tears the connection down at once; `reason` undefined means a deliberate close. */
  destroy(reason: Error | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeReason = reason;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    const err = reason ?? new DirectoryError(`${this.options.url}: connection closed`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true });
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    this.searchId = undefined;
    this.handler = undefined;
    if (reason) this.socket.destroy();
    const socket = this.socket;
    if (socket.destroyed) this.resolveClosed(reason);
    else socket.once('close', () => this.resolveClosed(reason));
  }
}

async function readPassword(o: SyncReplConnectionOptions): Promise<string> {
  if (o.passwordFile !== undefined) {
    try {
      return (await readFile(o.passwordFile, 'utf8')).trim();
    } catch (err) {
      throw new DirectoryError(`cannot read the LDAP password file ${o.passwordFile}: ${(err as Error).message}`, ReturnCode.missingConfigurationParameter, undefined, { retryable: false, cause: err });
    }
  }
  if (o.password !== undefined) return o.password;
  throw new DirectoryError('no LDAP password (passwordFile) configured', ReturnCode.missingConfigurationParameter, undefined, { retryable: false });
}

async function readCa(caFile: string | undefined): Promise<Buffer | undefined> {
  if (caFile === undefined) return undefined;
  try {
    return await readFile(caFile);
  } catch (err) {
    throw new DirectoryError(`cannot read the LDAP CA file ${caFile}: ${(err as Error).message}`, ReturnCode.missingConfigurationParameter, undefined, { retryable: false, cause: err });
  }
}

function describeSocketError(o: SyncReplConnectionOptions, err: Error & { code?: string }): DirectoryError {
  if (err.code && certificateErrorCodes.test(err.code)) {
    return new DirectoryError(
      `TLS to ${o.url}: the server certificate is not trusted (${err.code}: ${err.message}); ` +
        `it must be signed by ${o.caFile ? `a CA in ${o.caFile}` : 'a system CA (set STONEY_LDAP_CA_FILE for a private CA)'} and name the host of the URL`,
      ReturnCode.cannotConnectToBackend,
      undefined,
      // A wrong CA or host name is a configuration fault: say so instead of retrying silently.
      { retryable: false, cause: err },
    );
  }
  return new DirectoryError(`${o.url}: ${err.message}`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true, cause: err });
}

function connectSocket(o: SyncReplConnectionOptions, endpoint: Endpoint, ca: Buffer | undefined, timeoutMs: number): Promise<net.Socket> {
  if (endpoint.secure) return handshake(o, endpoint, ca, timeoutMs, {});
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: endpoint.host, port: endpoint.port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new DirectoryError(`${o.url}: no TCP connection within ${timeoutMs} ms`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true }));
    }, timeoutMs);
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(describeSocketError(o, err));
    });
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      tune(o, socket);
      resolve(socket);
    });
  });
}

/** TLS client handshake (ldaps:// from scratch, or StartTLS over `via.socket`); verifies the certificate and host name. */
function handshake(o: SyncReplConnectionOptions, endpoint: Endpoint, ca: Buffer | undefined, timeoutMs: number, via: { socket?: net.Socket }): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      ...(via.socket ? { socket: via.socket } : { host: endpoint.host, port: endpoint.port }),
      // SNI takes host names only; IP addresses are still checked against the certificate's SANs.
      ...(net.isIP(endpoint.host) ? {} : { servername: endpoint.host }),
      ...(ca ? { ca } : {}),
      rejectUnauthorized: true,
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new DirectoryError(`${o.url}: no TLS handshake within ${timeoutMs} ms`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true }));
    }, timeoutMs);
    socket.once('error', (err) => {
      clearTimeout(timer);
      socket.destroy();
      reject(describeSocketError(o, err));
    });
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      tune(o, socket);
      resolve(socket);
    });
  });
}

function tune(o: SyncReplConnectionOptions, socket: net.Socket): void {
  // Changes are single small messages: send and receive them without Nagle delay.
  socket.setNoDelay(true);
  const keepAliveMs = o.keepAliveMs ?? 10_000;
  if (keepAliveMs > 0) socket.setKeepAlive(true, keepAliveMs);
}
