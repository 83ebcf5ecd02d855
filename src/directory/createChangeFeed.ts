import path from 'node:path';
import type { Logger } from 'pino';
import type { DirectoryConnectionOptions } from './connect.js';
import type { LeafScanner, LeafScope } from './leafScan.js';
import { PollingChangeFeed } from './PollingChangeFeed.js';
import { assertTransportAllowed } from './ldapTransport.js';
import { providerUrls } from './providerUrls.js';
import { SyncReplChangeFeed, type SyncReplChangeFeedOptions } from './SyncReplChangeFeed.js';
import type { ChangeFeed } from './types.js';

export type ChangeFeedKind = 'sync' | 'poll';

export interface CreateChangeFeedOptions extends DirectoryConnectionOptions {
  /** `{ node }` for a node daemon, `{}` for the control daemon */
  scope: LeafScope;
  /** sync: the state file; wins over stateDir */
  stateFile?: string;
  /** sync: directory for a state file named after the scope (e.g. /var/lib/stoney-backup) */
  stateDir?: string;
  /** poll: interval, ms (default 1000) */
  pollIntervalMs?: number;
  logger?: Logger;
  /** both feeds: told when the feed gains (true) or loses (false) the directory */
  onConnectionChange?: (connected: boolean) => void;
  /** sync: tuning passed through (timers, backoff); mostly for tests */
  sync?: Pick<SyncReplChangeFeedOptions,
    'fullResyncIntervalMs' | 'heartbeatIntervalMs' | 'heartbeatTimeoutMs' | 'reconnectMinMs' | 'reconnectMaxMs' | 'stateFlushMs' | 'maxRefreshEvents'>;
}

/** The state file of a scope inside `stateDir`: one per node name, one for the control side. */
export function changeFeedStateFile(stateDir: string, scope: LeafScope): string {
  const name = scope.node === undefined ? 'control' : `node-${scope.node.replace(/[^A-Za-z0-9._-]/g, '_')}`;
  return path.join(stateDir, `changefeed-${name}.json`);
}

/**
 * The change feed the configuration asks for: `sync` (RFC 4533 push, the
 * default) or `poll` (an indexed search every interval, through the
 * directory session; for servers without syncprov).
 */
export function createChangeFeed(kind: ChangeFeedKind, opts: CreateChangeFeedOptions, directory: LeafScanner): ChangeFeed {
  // The same transport policy as the directory session: no bind password in clear text.
  for (const url of providerUrls(opts)) assertTransportAllowed(url, opts);
  if (kind === 'poll') {
    return new PollingChangeFeed(directory, opts.scope, {
      ...(opts.pollIntervalMs !== undefined ? { intervalMs: opts.pollIntervalMs } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
      ...(opts.onConnectionChange ? { onConnectionChange: opts.onConnectionChange } : {}),
    });
  }
  const stateFile = opts.stateFile ?? (opts.stateDir !== undefined ? changeFeedStateFile(opts.stateDir, opts.scope) : undefined);
  return new SyncReplChangeFeed({
    url: opts.url,
    ...(opts.urls !== undefined ? { urls: opts.urls } : {}),
    bindDn: opts.bindDn,
    passwordFile: opts.passwordFile,
    baseDn: opts.baseDn,
    scope: opts.scope,
    ...(stateFile !== undefined ? { stateFile } : {}),
    ...(opts.caFile !== undefined ? { caFile: opts.caFile } : {}),
    ...(opts.startTls !== undefined ? { startTls: opts.startTls } : {}),
    ...(opts.connectTimeoutMs !== undefined ? { connectTimeoutMs: opts.connectTimeoutMs } : {}),
    ...(opts.logger ? { logger: opts.logger } : {}),
    ...(opts.onConnectionChange ? { onConnectionChange: opts.onConnectionChange } : {}),
    ...opts.sync,
  });
}
