import type { Logger } from 'pino';
import { ReturnCode } from '../domain/returnCodes.js';
import { DirectoryError } from './DirectoryError.js';
import { ditPaths, normalizeDn, parseDn, type DitPaths } from './ditPaths.js';
import type { LeafScope } from './leafScan.js';
import type { LdapResult } from './ldapMessageFraming.js';
import { SyncReplConnection, type SyncEntry, type SyncReplConnectionOptions, type SyncSearch } from './SyncReplConnection.js';
import type { SyncDoneValue, SyncInfoValue } from './syncMessages.js';
import { csnSid, parseSyncCookie, type SyncCookieInfo } from './syncCookie.js';
import { SyncStateFile, SyncStateFileError } from './SyncStateFile.js';
import type { ChangeEvent, ChangeFeed } from './types.js';
import { backupSettingAttributes, cronAttributes, type Attributes } from '../domain/settings.js';
import { providerUrls, type ProviderUrlOptions } from './providerUrls.js';

export interface SyncReplChangeFeedOptions extends SyncReplConnectionOptions, ProviderUrlOptions {
  /** The site's suffix, e.g. o=stepping-stone,c=ch */
  baseDn: string;
  /** `{ node }`: a node daemon's view; `{}`: the control daemon's. */
  scope?: LeafScope;
  /** Where cookie and UUID map are kept across restarts; without it every start is a full refresh. */
  stateFile?: string;
  logger?: Logger;
  /** Told when the feed is in sync with the directory (true) and when it lost it (false): the metrics' view. */
  onConnectionChange?: (connected: boolean) => void;
  /** Emit `resync` this often as a safety net, ms (default 600 000; 0 = never). */
  fullResyncIntervalMs?: number;
  /** WhoAmI no-op on the sync connection this often, ms (default 15 000; 0 = never). */
  heartbeatIntervalMs?: number;
  /** A WhoAmI unanswered this long ends the connection, ms (default 10 000). */
  heartbeatTimeoutMs?: number;
  /** First reconnect delay, ms (default 250); doubles per failed attempt. */
  reconnectMinMs?: number;
  /** Longest reconnect delay, ms (default 30 000). */
  reconnectMaxMs?: number;
  /** During the persist phase, write the state file at most this often, ms (default 1 000). */
  stateFlushMs?: number;
  /**
   * A refresh that changed more entries than this emits only `resync`
   * instead of one event per entry (default 1 000): the consumer re-reads
   * everything anyway, and thousands of single reads would only add load.
   */
  maxRefreshEvents?: number;
  /**
   * Node scope: name up to this many of the node's VMs in the search filter,
   * so the server sends only their leaves (default 500); a node with more
   * receives every leaf and keeps its own.
   */
  maxFilteredVms?: number;
}

type SyncedKind = 'leaf' | 'vm' | 'settings';

/** Bookkeeping of one refresh phase (from sending the search until refreshDone). */
interface Refresh {
  startedAt: number;
  /** CSNs of the cookie we resumed from; undefined = no cookie sent */
  resumedFrom: SyncCookieInfo | undefined;
  /** the server sends the whole content: everything not seen in this refresh is gone */
  fullReload: boolean;
  /** entryUUIDs the server said exist (added, modified or listed present) */
  seen: Set<string>;
  /** a present phase already dropped the entries not seen */
  pruned: boolean;
  /** the cookie to commit when the refresh completes (committing earlier could lose deletes) */
  pendingCookie: Buffer | undefined;
  events: Map<string, ChangeEvent>;
  /** only `resync` at the end: too many changes, or nothing was known before */
  resyncOnly: boolean;
  changed: number;
  deleted: number;
}

/**
 * What the control scope's events carry: the leaf's protocol attributes, the
 * VM's placement and the settings entries whole (they are few).
 */
const controlScopeAttributes = [
  'objectClass', 'entryCSN', 'modifyTimestamp', 'sstNode', 'sstVirtualMachine', 'sstVirtualMachinePool', 'sstVirtualMachineType',
  'ou', 'sstProvisioningMode', 'sstProvisioningState', 'sstProvisioningReturnValue', 'sstProvisioningExecutionDate', 'sstProvisioningExecutionTime',
  'sstBackupExcludeFromBackup', ...backupSettingAttributes, ...cronAttributes,
];

const LEAF_CLASS = 'sstProvisioning';
const VM_CLASS = 'sstVirtualizationVirtualMachine';
const BACKUP_SETTINGS_CLASS = 'sstVirtualizationBackupObjectClass';
const CRON_CLASS = 'sstCronObjectClass';

/** An assertion value in a search filter (RFC 4515): * ( ) \ and NUL escaped. */
function filterValue(v: string): string {
  return v.replace(/[*()\\\0]/g, (c) => `\\${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** The provider URL a cookie origin names (see startRefresh). */
function originUrl(origin: string | undefined): string | undefined {
  if (origin === undefined) return undefined;
  try {
    const url = (JSON.parse(origin) as { url?: unknown }).url;
    return typeof url === 'string' ? url : undefined;
  } catch {
    return undefined;
  }
}

/** LDAP result codes of a sync search that no retry will fix: a configuration fault to report at start. */
const configurationResultCodes = new Set([
  2, // protocolError
  12, // unavailableCriticalExtension: no syncprov on this database
  32, // noSuchObject: wrong base DN
  48, // inappropriateAuthentication
  50, // insufficientAccessRights
  53, // unwillingToPerform
]);
/** e-syncRefreshRequired (RFC 4533 §2.5): the cookie cannot be served; start over without it. */
const SYNC_REFRESH_REQUIRED = 0x1000;
/** Results of a resumed sync search that blame the cookie: protocolError, unwillingToPerform. */
const cookieRefusalCodes = new Set([2, 53]);

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
  settled: boolean;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const d: Deferred = {
    promise,
    settled: false,
    resolve: () => {
      d.settled = true;
      resolve();
    },
    reject: (err) => {
      d.settled = true;
      reject(err);
    },
  };
  return d;
}

/**
 * ChangeFeed on OpenLDAP's Content Synchronization (RFC 4533
 * refreshAndPersist, served by syncprov): one long-lived search per daemon
 * over the VM subtree (node scope: leaves and VM entries; control scope,
 * from the service DN: also the backup settings entries). Changes arrive
 * within milliseconds and an idle feed costs nothing but a WhoAmI now and
 * then.
 *
 * Events are keys only, as with the poller; the daemons re-read what they
 * are told about (reconcile), so a duplicate is harmless and the feed errs
 * on the side of telling too much:
 * - `leaf` for every added, modified, renamed or deleted leaf (node scope:
 *   only of VMs whose sstNode is the node; the VM→node map is built from
 *   the VM entries of the same search);
 * - `vm` when a VM entry appears, disappears, is renamed or changes sstNode
 *   (node scope: only if it is or was on the node), so a node daemon
 *   notices VMs moving to or from it;
 * - `settings` for backup settings entries (control scope);
 * - `resync` after every completed refresh, i.e. after every (re)connect,
 *   and every `fullResyncIntervalMs`: the daemons then re-read everything.
 *
 * A node's search names its VMs in the filter (every VM entry, but only the
 * leaves below the node's VMs), so the server does not send it the other
 * nodes' leaf changes; the client-side check stays as a guard. When the
 * node's VM set changes the search starts over with the new filter (a full
 * refresh: the old cookie speaks of another search), so a VM moved to the
 * node is seen with all its leaves.
 *
 * With several provider URLs (a replicated directory) a lost connection
 * moves the feed to the next provider. A cookie is kept only for the
 * provider and filter it came from; elsewhere the feed does a full refresh,
 * reconciled against its map as after any other reconnect.
 *
 * Deletes are resolved through an entryUUID→DN map, kept with the cookie in
 * the state file and committed only at consistent points (end of a refresh,
 * then after each persisted change), so a restart resumes where it left off.
 * A missing, garbage or stale cookie means a full refresh, reconciled
 * against the map: whatever the server no longer lists counts as deleted.
 */
export class SyncReplChangeFeed implements ChangeFeed {
  private readonly paths: DitPaths;
  private readonly scope: LeafScope;
  private readonly search: Omit<SyncSearch, 'cookie'>;
  private readonly searchKey: string;
  private readonly state: SyncStateFile | undefined;
  private readonly urls: string[];
  /** index in `urls` of the provider the feed uses (or tries) now */
  private current = 0;
  /** provider and filter of the running search: a cookie is only valid for the search it came from */
  private activeOrigin: string | undefined;
  private activeFilter: string | undefined;
  private readonly logger: Logger | undefined;

  private onChange: ((e: ChangeEvent) => void) | undefined;
  private stopped = true;
  private loop: Promise<void> | undefined;
  private conn: SyncReplConnection | undefined;
  private first: Deferred | undefined;
  private sleepTimer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();

  // What the feed knows; committed together with `cookie`.
  private cookie: Buffer | undefined;
  /** activeOrigin of the search that gave `cookie` */
  private cookieOrigin: string | undefined;
  private readonly uuidToDn = new Map<string, string>();
  private readonly vmNodes = new Map<string, string>();
  /** lower-case VM name → lower-case sstNode, derived from uuidToDn + vmNodes */
  private readonly nodeByVm = new Map<string, string>();
  private refresh: Refresh | undefined;
  /** Events of a refresh cut short by a lost connection: delivered at the end of the next one. */
  private carried: Pick<Refresh, 'events' | 'resyncOnly'> | undefined;
  /** False from the start of a refresh to its end: the map is half-updated and must not be saved. */
  private consistent = true;
  private dirty = false;
  private inSync = false;
  /** Reconnect without delay: the server refused the cookie and a full refresh follows. */
  private retryNow = false;

  constructor(private readonly options: SyncReplChangeFeedOptions) {
    this.paths = ditPaths(options.baseDn);
    this.scope = options.scope ?? {};
    this.logger = options.logger?.child({ feed: 'syncrepl', scope: this.scope.node ?? 'all' });
    this.state = options.stateFile ? new SyncStateFile(options.stateFile) : undefined;
    this.urls = providerUrls(options);
    const classes = this.scope.node === undefined ? [LEAF_CLASS, VM_CLASS, BACKUP_SETTINGS_CLASS, CRON_CLASS] : [LEAF_CLASS, VM_CLASS];
    this.search = {
      // Control scope starts higher to include the global and pool settings.
      baseDn: this.scope.node === undefined ? this.paths.serviceDn : this.paths.vmsDn,
      scope: 'sub',
      filter: `(|${classes.map((c) => `(objectClass=${c})`).join('')})`,
      // The classes only; a node's search narrows the leaves to its VMs (searchFilter).
      // sstNode for the VM→node map; entryCSN to notice a full reload. A node's leaf events carry the
      // mode only (it claims on it before reading anything); the control daemon's carry what it keeps
      // in memory, so it never reads an entry per change.
      attributes: this.scope.node === undefined ? controlScopeAttributes : ['sstNode', 'entryCSN', 'sstProvisioningMode'],
      mode: 'refreshAndPersist',
    };
    this.searchKey = JSON.stringify({ base: normalizeDn(this.search.baseDn), filter: this.search.filter, node: this.scope.node?.toLowerCase() ?? null });
  }

  /**
   * Loads the state file, connects and waits for the first refresh to end
   * (the first `resync` has then been emitted). Rejects on a configuration
   * fault (bad credentials, untrusted certificate, no syncprov, unreadable
   * password or CA file); a server that is merely unreachable is logged and
   * retried in the background, like the poller does.
   */
  async start(onChange: (e: ChangeEvent) => void): Promise<void> {
    if (!this.stopped) throw new Error('SyncReplChangeFeed already started');
    this.stopped = false;
    this.onChange = onChange;
    await this.loadState();
    this.first = deferred();
    this.loop = this.run();
    const every = this.options.fullResyncIntervalMs ?? 600_000;
    if (every > 0) this.resyncTimer = setInterval(() => this.emit({ kind: 'resync', dn: '' }), every);
    try {
      await this.first.promise;
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /** Closes the connection, clears every timer, writes the state; resolves when all of that is done. */
  async stop(): Promise<void> {
    if (this.stopped && !this.loop) return;
    this.stopped = true;
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    this.resyncTimer = undefined;
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.sleepTimer) clearTimeout(this.sleepTimer);
    this.sleepTimer = undefined;
    this.wake?.();
    await this.conn?.close();
    await this.loop;
    this.loop = undefined;
    // After a refresh cut short the map is half-updated: the file keeps the last consistent state.
    if (this.dirty && this.consistent) this.flush();
    await this.writing;
    this.first?.resolve();
    this.onChange = undefined;
    this.refresh = undefined;
    this.inSync = false;
  }

  /** True while the feed is in the persist phase (changes arrive as they happen). */
  get synced(): boolean {
    return this.inSync;
  }

  /** Entries the feed knows (for tests and logs). */
  get knownEntries(): ReadonlyMap<string, string> {
    return this.uuidToDn;
  }

  // ---- connection loop ---------------------------------------------------

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      let reachedPersist = false;
      let reason: Error | undefined;
      let conn: SyncReplConnection | undefined;
      try {
        conn = await SyncReplConnection.open({ ...this.options, url: this.urls[this.current] as string });
        if (this.stopped) {
          await conn.close();
          break;
        }
        this.conn = conn;
        this.startRefresh(conn);
        conn.startHeartbeat(this.options.heartbeatIntervalMs ?? 15_000, this.options.heartbeatTimeoutMs ?? 10_000);
        reason = await conn.closed;
        reachedPersist = this.inSync;
      } catch (err) {
        reason = err instanceof Error ? err : new Error(String(err));
        conn?.destroy(reason);
      } finally {
        this.conn = undefined;
        if (this.inSync) this.options.onConnectionChange?.(false);
        this.inSync = false;
        if (this.refresh) this.carried = { events: this.refresh.events, resyncOnly: this.refresh.resyncOnly };
        this.refresh = undefined;
      }
      if (this.stopped) break;
      if (this.retryNow) {
        // Not a failure: the server asked for a full refresh. Go again at once, without counting.
        this.retryNow = false;
        continue;
      }
      if (reason === undefined) reason = new Error('connection closed');
      if (this.urls.length > 1) {
        // A replicated directory: the next provider may well answer (the cookie stays with the old one).
        const from = this.urls[this.current];
        this.current = (this.current + 1) % this.urls.length;
        this.logger?.warn({ from, to: this.urls[this.current], err: reason.message }, 'sync change feed moves to the next directory provider');
      }
      const configFault = reason instanceof DirectoryError && !reason.retryable;
      if (this.first && !this.first.settled && configFault) {
        this.first.reject(reason);
        break;
      }
      failures = reachedPersist ? 1 : failures + 1;
      const delay = this.backoff(failures);
      const log = { err: reason.message, retryInMs: delay, failures };
      if (configFault) this.logger?.error(log, 'sync change feed cannot work with this configuration; retrying');
      else if (failures === 1 || failures % 10 === 0) this.logger?.warn(log, 'sync change feed lost the directory; reconnecting');
      if (this.first && !this.first.settled) {
        // Unreachable at start: the daemon may start; the feed keeps trying and sends resync once connected.
        this.logger?.warn({ err: reason.message }, 'directory not reachable for the change feed at start; will keep trying');
        this.first.resolve();
      }
      await this.sleep(delay);
    }
  }

  private backoff(failures: number): number {
    const min = this.options.reconnectMinMs ?? 250;
    const max = this.options.reconnectMaxMs ?? 30_000;
    const base = Math.min(max, min * 2 ** Math.min(failures - 1, 20));
    // ±20 % so that many daemons do not reconnect in lockstep after a server restart.
    return Math.round(base * (0.8 + Math.random() * 0.4));
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = () => {
        this.wake = undefined;
        resolve();
      };
      this.sleepTimer = setTimeout(() => {
        this.sleepTimer = undefined;
        this.wake?.();
      }, ms);
    });
  }

  /** Node scope: the VM entries, and the leaves of the node's VMs only (up to maxFilteredVms of them). */
  private searchFilter(): string {
    if (this.scope.node === undefined) return this.search.filter;
    const names = this.ownVmNames();
    if (names.length > (this.options.maxFilteredVms ?? 500)) return this.search.filter;
    const leaves = names.length === 0
      ? ''
      : `(&(objectClass=${LEAF_CLASS})(|${names.map((n) => `(sstVirtualMachine:dn:=${filterValue(n)})`).join('')}))`;
    return `(|(objectClass=${VM_CLASS})${leaves})`;
  }

  /** The names (as spelled in their DNs) of the VMs on this feed's node, sorted: the filter must not depend on map order. */
  private ownVmNames(): string[] {
    const names = new Map<string, string>();
    for (const [uuid, node] of this.vmNodes) {
      if (!this.concerns(node)) continue;
      const rdn = parseDn(this.uuidToDn.get(uuid) ?? '')[0]?.[0];
      if (rdn && rdn.attribute.toLowerCase() === 'sstvirtualmachine') names.set(rdn.value.toLowerCase(), rdn.value);
    }
    return [...names.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, v]) => v);
  }

  /**
   * The node's VM set changed (a VM moved to or from it): the running search
   * names the wrong VMs. Start over at once with the new filter; the events
   * of a refresh cut short are carried into the next one.
   */
  private restartIfFilterStale(): boolean {
    const conn = this.conn;
    if (this.scope.node === undefined || !conn || this.activeFilter === undefined) return false;
    if (this.searchFilter() === this.activeFilter) return false;
    this.logger?.info({ vms: this.ownVmNames().length }, "the node's VM set changed; restarting the sync search with the new filter");
    this.retryNow = true;
    conn.destroy(new DirectoryError(`${conn.url}: restarting the sync search for a new VM set`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true }));
    return true;
  }

  private startRefresh(conn: SyncReplConnection): void {
    const filter = this.searchFilter();
    this.activeFilter = filter;
    this.activeOrigin = JSON.stringify({ url: conn.url, filter });
    if (this.cookie && this.cookieOrigin !== this.activeOrigin) {
      // Another provider's cookie (in general not valid on this one), or one of another VM set's
      // search (it would not bring the leaves of VMs new to the filter): a full refresh.
      this.logger?.info({ provider: conn.url }, 'sync cookie belongs to another provider or search; doing a full refresh');
      this.cookie = undefined;
      this.cookieOrigin = undefined;
    }
    const resumedFrom = parseSyncCookie(this.cookie);
    if (this.cookie && !resumedFrom) {
      // OpenLDAP answers a cookie it cannot parse like none at all, but ends with refreshDelete,
      // which would leave deleted entries in the map: drop it and reconcile explicitly.
      this.logger?.warn({ cookie: this.cookie.toString('latin1').slice(0, 200) }, 'stored sync cookie is not usable; doing a full refresh');
      this.cookie = undefined;
    }
    this.consistent = false;
    this.refresh = {
      startedAt: performance.now(),
      resumedFrom,
      fullReload: resumedFrom === undefined,
      seen: new Set(),
      pruned: false,
      pendingCookie: undefined,
      events: this.carried?.events ?? new Map(),
      // Knowing nothing yet, every entry is "new": the closing resync says it all.
      resyncOnly: (this.carried?.resyncOnly ?? false) || this.uuidToDn.size === 0,
      changed: 0,
      deleted: 0,
    };
    this.carried = undefined;
    conn.startSync({ ...this.search, filter, cookie: resumedFrom ? this.cookie : undefined }, {
      entry: (e) => this.onEntry(e),
      info: (i) => this.onInfo(i),
      done: (r, d) => this.onDone(conn, r, d),
    });
  }

  // ---- what the server sends -------------------------------------------

  private onEntry(e: SyncEntry): void {
    const { state, uuid, cookie } = e.sync;
    const r = this.refresh;
    if (state === 'delete') {
      this.remove(uuid, e.dn);
    } else {
      r?.seen.add(uuid);
      if (r && !r.fullReload && r.resumedFrom && state === 'add') this.detectFullReload(r, r.resumedFrom, e);
      // A bare "present" of an entry we know is no change.
      if (state !== 'present' || !this.uuidToDn.has(uuid)) this.upsert(uuid, e.dn, state === 'present' ? undefined : e.attributes);
    }
    // A VM entry may change the node's VM set (persist phase; a refresh checks at its end).
    if (!r && this.classify(e.dn) === 'vm' && this.restartIfFilterStale()) return;
    this.noteCookie(cookie);
  }

  /** An entry not changed since the cookie means the server ignored the cookie and sends everything. */
  private detectFullReload(r: Refresh, from: SyncCookieInfo, e: SyncEntry): void {
    const csn = e.attributes.get('entrycsn')?.[0];
    const sid = csn === undefined ? undefined : csnSid(csn);
    const since = sid === undefined ? undefined : from.csnBySid.get(sid);
    if (csn !== undefined && since !== undefined && csn <= since) {
      r.fullReload = true;
      this.logger?.info({ entry: e.dn, entryCsn: csn, cookieCsn: since }, 'server sends unchanged entries: treating this refresh as a full reload');
    }
  }

  private onInfo(i: SyncInfoValue): void {
    const r = this.refresh;
    switch (i.kind) {
      case 'newCookie':
        this.noteCookie(i.cookie);
        return;
      case 'syncIdSet':
        if (i.refreshDeletes) for (const uuid of i.uuids) this.remove(uuid, undefined);
        else for (const uuid of i.uuids) r?.seen.add(uuid);
        if (!r && this.restartIfFilterStale()) return;
        this.noteCookie(i.cookie);
        return;
      case 'refreshPresent':
        this.prune();
        this.noteCookie(i.cookie);
        if (i.refreshDone) this.finishRefresh();
        return;
      case 'refreshDelete':
        this.noteCookie(i.cookie);
        if (i.refreshDone) this.finishRefresh();
        return;
    }
  }

  private onDone(conn: SyncReplConnection, result: LdapResult, done: SyncDoneValue): void {
    if (result.resultCode === 0) {
      // Only a refreshOnly search ends this way; treat like the end of a refresh, then start over.
      if (!done.refreshDeletes) this.prune();
      this.noteCookie(done.cookie);
      if (this.refresh) this.finishRefresh();
      conn.destroy(new DirectoryError(`${conn.url}: the server ended the sync search`, ReturnCode.cannotConnectToBackend, 0, { retryable: true }));
      return;
    }
    const cookieSent = this.refresh?.resumedFrom !== undefined;
    // e-syncRefreshRequired, or a cookie the server refuses outright (slapd: 53 "consumer state is newer
    // than provider!" after the directory went back in time, e.g. restored from a backup): start over
    // without it. The full refresh is reconciled against the map, so nothing is missed.
    if (result.resultCode === SYNC_REFRESH_REQUIRED || (cookieSent && cookieRefusalCodes.has(result.resultCode))) {
      this.logger?.warn({ resultCode: result.resultCode, diagnostic: result.diagnosticMessage }, 'server cannot resume from our sync cookie; doing a full refresh');
      this.cookie = undefined;
      this.markDirty();
      this.retryNow = true;
      conn.destroy(new DirectoryError(`${conn.url}: the server cannot resume from our cookie (LDAP result ${result.resultCode})`, ReturnCode.cannotConnectToBackend, result.resultCode, { retryable: true }));
      return;
    }
    const hint = result.resultCode === 12
      ? ': the database has no syncprov overlay (see ldif/config.ldif) — or use STONEY_CHANGE_FEED=poll'
      : result.resultCode === 4
        ? ': the size limit of this identity is too low for the daemons (see olcLimits in ldif/acl-example.ldif)'
        : '';
    conn.destroy(new DirectoryError(
      `sync search of ${this.search.baseDn} on ${conn.url} failed: ${result.diagnosticMessage || 'no reason given'} (LDAP result ${result.resultCode})${hint}`,
      ReturnCode.cannotConnectToBackend,
      result.resultCode,
      { retryable: !configurationResultCodes.has(result.resultCode) },
    ));
  }

  /** Never lets an empty cookie replace a good one; during a refresh the cookie waits for its end. */
  private noteCookie(cookie: Buffer | undefined): void {
    if (!cookie || cookie.length === 0) return;
    if (this.refresh) {
      this.refresh.pendingCookie = cookie;
      return;
    }
    this.cookie = cookie;
    this.cookieOrigin = this.activeOrigin;
    this.markDirty();
  }

  /** Everything the server did not mention in this refresh is gone (present phase, or full reload). */
  private prune(): void {
    const r = this.refresh;
    if (!r || r.pruned) return;
    r.pruned = true;
    const gone = [...this.uuidToDn.keys()].filter((uuid) => !r.seen.has(uuid));
    // Leaves before VMs: a leaf's node is looked up through its VM.
    const rank = (uuid: string) => (this.classify(this.uuidToDn.get(uuid) ?? '') === 'vm' ? 1 : 0);
    gone.sort((a, b) => rank(a) - rank(b));
    for (const uuid of gone) this.remove(uuid, undefined);
  }

  private finishRefresh(): void {
    const r = this.refresh;
    if (!r) return;
    if (r.fullReload) this.prune();
    // The refresh taught the node VMs its filter did not name (e.g. at the first start): go again.
    if (this.restartIfFilterStale()) return;
    if (r.pendingCookie) {
      this.cookie = r.pendingCookie;
      this.cookieOrigin = this.activeOrigin;
    }
    this.refresh = undefined;
    this.consistent = true;
    if (!this.inSync) this.options.onConnectionChange?.(true);
    this.inSync = true;
    const events = r.resyncOnly ? [] : [...r.events.values()];
    this.logger?.info({
      entries: this.uuidToDn.size,
      changed: r.changed,
      deleted: r.deleted,
      events: r.resyncOnly ? 'resync only' : events.length,
      resumed: r.resumedFrom !== undefined,
      fullReload: r.fullReload,
      durationMs: Math.round(performance.now() - r.startedAt),
    }, 'sync change feed is in sync; following changes');
    for (const e of events) this.emit(e);
    this.emit({ kind: 'resync', dn: '' });
    this.markDirty();
    this.flush();
    this.first?.resolve();
  }

  // ---- the map and the events -------------------------------------------

  private classify(dn: string): SyncedKind | undefined {
    const rdns = parseDn(dn);
    const attr = (i: number) => rdns[i]?.[0]?.attribute.toLowerCase();
    const value = (i: number) => rdns[i]?.[0]?.value.toLowerCase();
    if (attr(0) === 'sstvirtualmachine') return 'vm';
    if (attr(0) === 'ou' && value(0) === 'backup') return 'settings';
    if (attr(1) === 'ou' && value(1) === 'backup' && attr(2) === 'sstvirtualmachine') return 'leaf';
    return undefined;
  }

  /** The VM name a leaf or VM DN belongs to (lower-case). */
  private vmOf(dn: string): string | undefined {
    for (const rdn of parseDn(dn)) {
      const ava = rdn[0];
      if (ava && ava.attribute.toLowerCase() === 'sstvirtualmachine') return ava.value.toLowerCase();
    }
    return undefined;
  }

  private concerns(node: string | undefined): boolean {
    if (this.scope.node === undefined) return true;
    return node !== undefined && node.toLowerCase() === this.scope.node.toLowerCase();
  }

  private upsert(uuid: string, dn: string, attributes: Map<string, string[]> | undefined): void {
    const kind = this.classify(dn);
    if (!kind) return;
    const oldDn = this.uuidToDn.get(uuid);
    const renamed = oldDn !== undefined && normalizeDn(oldDn) !== normalizeDn(dn);
    this.uuidToDn.set(uuid, dn);
    if (this.refresh) this.refresh.changed += 1;
    if (oldDn === undefined || renamed) this.markDirty();
    const carried = this.scope.node === undefined && attributes ? Object.fromEntries(attributes) as Attributes : undefined;
    if (kind === 'vm') {
      const oldNode = this.vmNodes.get(uuid);
      const newNode = attributes ? attributes.get('sstnode')?.[0] : oldNode;
      if (newNode === undefined) this.vmNodes.delete(uuid);
      else this.vmNodes.set(uuid, newNode);
      if (renamed) this.nodeByVm.delete(this.vmOf(oldDn) ?? '');
      const name = this.vmOf(dn);
      if (name !== undefined) {
        if (newNode === undefined) this.nodeByVm.delete(name);
        else this.nodeByVm.set(name, newNode.toLowerCase());
      }
      const moved = (oldNode ?? '').toLowerCase() !== (newNode ?? '').toLowerCase();
      if (moved) this.markDirty();
      // The control side keeps every VM's pool and type too: it hears of any change.
      if (renamed) this.queue({ kind: 'vm', dn: oldDn, deleted: true });
      if ((oldDn === undefined || renamed || moved || carried) && (this.concerns(oldNode) || this.concerns(newNode))) this.queue({ kind: 'vm', dn, ...(carried ? { attributes: carried } : {}) });
      return;
    }
    if (kind === 'leaf') {
      if (renamed) this.leafChanged(oldDn, undefined, true);
      const mode = this.scope.node !== undefined ? attributes?.get('sstprovisioningmode') : undefined;
      this.leafChanged(dn, carried ?? (mode ? { sstprovisioningmode: mode } : undefined));
      return;
    }
    this.queue({ kind: 'settings', dn, ...(carried ? { attributes: carried } : {}) });
  }

  private remove(uuid: string, dnHint: string | undefined): void {
    const dn = this.uuidToDn.get(uuid) ?? dnHint;
    // syncIdSet deletes may name entries this consumer never had: nothing to tell.
    if (dn === undefined) return;
    const known = this.uuidToDn.delete(uuid);
    if (known) this.markDirty();
    if (this.refresh) this.refresh.deleted += 1;
    const kind = this.classify(dn);
    if (kind === 'vm') {
      const oldNode = this.vmNodes.get(uuid);
      this.vmNodes.delete(uuid);
      const name = this.vmOf(dn);
      if (name !== undefined) this.nodeByVm.delete(name);
      if (this.concerns(oldNode)) this.queue({ kind: 'vm', dn, deleted: true });
    } else if (kind === 'leaf') {
      this.leafChanged(dn, undefined, true);
    } else if (kind === 'settings') {
      this.queue({ kind: 'settings', dn, deleted: true });
    }
  }

  private leafChanged(dn: string, attributes?: Attributes, deleted = false): void {
    if (this.scope.node !== undefined && !this.concerns(this.nodeByVm.get(this.vmOf(dn) ?? ''))) return;
    this.queue({ kind: 'leaf', dn, ...(attributes ? { attributes } : {}), ...(deleted ? { deleted } : {}) });
  }

  /** Emits now in the persist phase; during a refresh collects (deduplicated) for its end. */
  private queue(e: ChangeEvent): void {
    const r = this.refresh;
    if (!r) {
      this.emit(e);
      return;
    }
    // The resync that ends every refresh makes the daemons re-read all VMs anyway.
    if (e.kind === 'vm' || r.resyncOnly) return;
    r.events.set(`${e.kind}:${normalizeDn(e.dn)}`, e);
    if (r.events.size > (this.options.maxRefreshEvents ?? 1_000)) {
      r.resyncOnly = true;
      r.events.clear();
    }
  }

  private emit(e: ChangeEvent): void {
    if (this.stopped || !this.onChange) return;
    try {
      this.onChange(e);
    } catch (err) {
      this.logger?.error({ err, event: e }, 'change feed consumer threw');
    }
  }

  // ---- state file ----------------------------------------------------------

  private async loadState(): Promise<void> {
    this.cookie = undefined;
    this.cookieOrigin = undefined;
    this.uuidToDn.clear();
    this.vmNodes.clear();
    this.nodeByVm.clear();
    this.dirty = false;
    this.consistent = true;
    this.carried = undefined;
    if (!this.state) return;
    let data;
    try {
      data = await this.state.load();
    } catch (err) {
      if (!(err instanceof SyncStateFileError)) throw err;
      this.logger?.warn({ err: err.message }, 'ignoring the change feed state; doing a full refresh');
      return;
    }
    if (!data) return;
    if (data.searchKey !== this.searchKey) {
      this.logger?.info({ file: this.state.file }, 'change feed state belongs to another search (scope or base changed); doing a full refresh');
      return;
    }
    this.cookie = data.cookie;
    this.cookieOrigin = data.cookieOrigin;
    // Start with the provider the cookie came from, so that a restart resumes instead of a full refresh.
    const from = this.urls.indexOf(originUrl(data.cookieOrigin) ?? '');
    if (from >= 0) this.current = from;
    for (const [uuid, dn] of data.uuidToDn) this.uuidToDn.set(uuid, dn);
    for (const [uuid, node] of data.vmNodes) {
      this.vmNodes.set(uuid, node);
      const dn = data.uuidToDn.get(uuid);
      const name = dn === undefined ? undefined : this.vmOf(dn);
      if (name !== undefined) this.nodeByVm.set(name, node.toLowerCase());
    }
    this.logger?.debug({ file: this.state.file, entries: this.uuidToDn.size, hasCookie: this.cookie !== undefined }, 'change feed state loaded');
  }

  private markDirty(): void {
    this.dirty = true;
    if (!this.state || !this.consistent || this.flushTimer || this.stopped) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      this.flush();
    }, this.options.stateFlushMs ?? 1_000);
  }

  /** Queues a write of the current (consistent) state; writes never overlap. */
  private flush(): void {
    const state = this.state;
    if (!state || !this.dirty || !this.consistent) return;
    this.dirty = false;
    // Serialized now, so later changes cannot tear this snapshot.
    const snapshot = {
      searchKey: this.searchKey,
      cookie: this.cookie,
      ...(this.cookieOrigin !== undefined ? { cookieOrigin: this.cookieOrigin } : {}),
      uuidToDn: new Map(this.uuidToDn),
      vmNodes: new Map(this.vmNodes),
    };
    this.writing = this.writing
      .then(() => state.save(snapshot))
      .catch((err: unknown) => {
        this.dirty = true;
        this.logger?.error({ err: err instanceof Error ? err.message : String(err), file: state.file }, 'cannot write the change feed state');
      });
  }
}
