import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../domain/errors.js';
import type { DirectoryConnectionOptions } from '../directory/connect.js';
import { defaultBatchPolicy, type BatchPolicy } from '../control/decideBatch.js';
import { DEFAULT_RESTORE_DECISION_TIMEOUT_MS } from '../control/decideRestores.js';
import { defaultLeaseTiming, leaseTimingProblem, type LeaseTiming } from '../control/leaseDecision.js';
import { DEFAULT_ALLOWED_ROOTS } from '../domain/allowedRoots.js';
import { plaintextRefusal } from '../directory/ldapTransport.js';
import { parseUrlList } from '../directory/providerUrls.js';
import { parseListenAddress, type ListenAddress } from '../metrics/MetricsServer.js';

/**
 * Configuration: a file of KEY=value lines (the format of a systemd
 * EnvironmentFile, so one file serves both) and the environment, which wins.
 * Passwords are only ever read from files.
 */
export interface Config {
  ldap: DirectoryConnectionOptions;
  nodeName: string | undefined;
  libvirtUri: string;
  imageRoots: string[];
  /** directories the directory's backup, retain and RAM-disk settings must lie in (node side) */
  allowedRoots: string[];
  logLevel: string;
  pollIntervalMs: number;
  /** how the daemons learn of changes: RFC 4533 push (sync) or polling (poll) */
  changeFeed: 'sync' | 'poll';
  /** where the sync feed keeps its cookie and UUID map, one file per daemon */
  feedStateDir: string;
  /** PEM CA file the sync feed verifies the server with (default: system CAs) */
  ldapCaFile: string | undefined;
  /** StartTLS on an ldap:// URL (sync feed) */
  ldapStartTls: boolean;
  policy: BatchPolicy;
  /** the control daemons' lease: how long it lasts unrenewed and how often it is renewed (and looked at by a standby) */
  controlLease: LeaseTiming;
  /** IANA zone for the cron fields; default the host's */
  timeZone: string | undefined;
  concurrency: number;
  runDir: string;
  /** where the daemons serve Prometheus metrics; undefined: no metrics, no port */
  metricsListen: ListenAddress | undefined;
  configFile: string | undefined;
}

export const configKeys = {
  STONEY_LDAP_URL: 'ldap:// or ldaps:// URL of the directory, or the URLs of replicating providers separated by spaces or commas, tried in order (required)',
  STONEY_LDAP_BIND_DN: 'DN the daemons and the CLI bind as (required)',
  STONEY_LDAP_PASSWORD_FILE: 'file holding the bind password (required)',
  STONEY_LDAP_BASE_DN: 'suffix of the site, e.g. o=stepping-stone,c=ch (required)',
  STONEY_NODE_NAME: 'this hypervisor as in sstNode (node daemon, kvmbackup, backup --local)',
  STONEY_LIBVIRT_URI: 'libvirt connection (default qemu:///system)',
  STONEY_IMAGE_ROOTS: 'colon-separated directories disks must live in (default /var/virtualization)',
  STONEY_ALLOWED_ROOTS: 'colon-separated directories the backup, retain and RAM-disk settings from the directory must lie in (default /var/backup/virtualization:/var/virtualization/retain)',
  STONEY_LOG_LEVEL: 'pino level: debug, info, warn, error (default info for daemons, warn for commands)',
  STONEY_POLL_INTERVAL_MS: 'change-feed poll interval (default 1000)',
  STONEY_CHANGE_FEED: 'how the daemons learn of changes: sync (RFC 4533 push, needs syncprov) or poll (default sync)',
  STONEY_FEED_STATE_DIR: 'directory of the sync change feed state files (default /var/lib/stoney-backup)',
  STONEY_LDAP_CA_FILE: 'PEM file of the CA that signs the LDAP server certificate, for every directory connection (default: system CAs)',
  STONEY_LDAP_STARTTLS: 'true: StartTLS before the bind on the ldap:// URL, for every directory connection (default false)',
  STONEY_LDAP_ALLOW_PLAINTEXT: 'true: accept a plain ldap:// URL to a host other than loopback, sending the password in clear text (default false)',
  STONEY_CLAIM_TIMEOUT_S: 'fail a command no node claimed within this many seconds (default 300)',
  STONEY_STEP_TIMEOUT_S: 'fail a step that showed no sign of life (report or progress heartbeat) within this many seconds (default 21600)',
  STONEY_RESTORE_DECISION_TIMEOUT_S: 'control daemon: give up a restore whose conflicts nobody decided within this many seconds; the leaf goes back to finished (default 86400)',
  STONEY_CONTROL_LEASE_S: 'control daemons: a standby takes over when the active one has not renewed the lease for this many seconds, judged by the directory server clock (default 15)',
  STONEY_CONTROL_LEASE_RENEW_S: 'control daemons: the active one renews the lease, and a standby looks at it, every this many seconds; at most a third of STONEY_CONTROL_LEASE_S (default 3)',
  STONEY_MERGE_CONCURRENCY: 'VMs of one batch merged/retained at once on each node (default 1)',
  STONEY_STEP_CONCURRENCY: 'steps a node daemon runs at once, never two per VM (default 4)',
  STONEY_TIMEZONE: 'IANA zone of the sstCron* fields (default: the host zone)',
  STONEY_SHUTDOWN_TIMEOUT_S: 'ignored, accepted so existing files keep working: a restore saves the VM it replaces at once instead of waiting for a shutdown',
  STONEY_RUN_DIR: 'directory of the per-node lock file (default /run/stoney-backup)',
  STONEY_METRICS_LISTEN: 'host:port where the node and control daemons serve Prometheus metrics on /metrics (default: off, no port opened)',
} as const;

export function parseEnvFile(text: string, file: string): Record<string, string> {
  const out: Record<string, string> = {};
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^(?:export\s+)?([A-Z_][A-Z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!m) throw new UsageError(`${file}:${i + 1}: expected KEY=value, got ${JSON.stringify(line)}`);
    let v = m[2] ?? '';
    if ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'"))) v = v.slice(1, -1);
    out[m[1] as string] = v;
  });
  return out;
}

function positiveInt(key: string, v: string | undefined, fallback: number): number {
  if (v === undefined || v === '') return fallback;
  if (!/^\d+$/.test(v) || Number(v) <= 0) throw new UsageError(`${key}: ${JSON.stringify(v)} is not a positive integer`);
  return Number(v);
}

export async function loadConfig(configFile: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<Config> {
  let fileValues: Record<string, string> = {};
  if (configFile) {
    let text: string;
    try {
      text = await readFile(configFile, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read the configuration file ${configFile}: ${(err as Error).message}`);
    }
    fileValues = parseEnvFile(text, configFile);
    for (const k of Object.keys(fileValues)) {
      if (!(k in configKeys)) throw new UsageError(`${configFile}: unknown key ${k} (known: ${Object.keys(configKeys).join(', ')})`);
    }
  }
  const get = (k: keyof typeof configKeys): string | undefined => {
    const v = env[k] ?? fileValues[k];
    return v === undefined || v === '' ? undefined : v;
  };
  const required = (k: keyof typeof configKeys): string => {
    const v = get(k);
    if (v === undefined) throw new UsageError(`${k} is not set (${configKeys[k]}); set it in the environment or in --config`);
    return v;
  };
  const urls = parseUrlList(required('STONEY_LDAP_URL'));
  for (const url of urls) {
    if (!/^ldaps?:\/\//.test(url)) throw new UsageError(`STONEY_LDAP_URL: ${JSON.stringify(url)} is not an ldap:// or ldaps:// URL`);
  }
  if (urls.length === 0) throw new UsageError('STONEY_LDAP_URL names no URL');
  if (new Set(urls).size !== urls.length) throw new UsageError(`STONEY_LDAP_URL: ${urls.join(' ')} names a provider twice`);
  const changeFeed = get('STONEY_CHANGE_FEED') ?? 'sync';
  if (changeFeed !== 'sync' && changeFeed !== 'poll') throw new UsageError(`STONEY_CHANGE_FEED: ${JSON.stringify(changeFeed)} is neither sync nor poll`);
  const feedStateDir = get('STONEY_FEED_STATE_DIR') ?? '/var/lib/stoney-backup';
  if (!path.isAbsolute(feedStateDir)) throw new UsageError(`STONEY_FEED_STATE_DIR: ${feedStateDir} is not an absolute path`);
  const ldapCaFile = get('STONEY_LDAP_CA_FILE');
  if (ldapCaFile !== undefined && !path.isAbsolute(ldapCaFile)) throw new UsageError(`STONEY_LDAP_CA_FILE: ${ldapCaFile} is not an absolute path`);
  const startTls = (get('STONEY_LDAP_STARTTLS') ?? 'false').toLowerCase();
  if (startTls !== 'true' && startTls !== 'false') throw new UsageError(`STONEY_LDAP_STARTTLS: ${JSON.stringify(startTls)} is neither true nor false`);
  if (startTls === 'true' && urls.some((u) => u.startsWith('ldaps://'))) throw new UsageError('STONEY_LDAP_STARTTLS: an ldaps:// URL is TLS already; StartTLS is for ldap:// URLs');
  const allowPlaintext = (get('STONEY_LDAP_ALLOW_PLAINTEXT') ?? 'false').toLowerCase();
  if (allowPlaintext !== 'true' && allowPlaintext !== 'false') throw new UsageError(`STONEY_LDAP_ALLOW_PLAINTEXT: ${JSON.stringify(allowPlaintext)} is neither true nor false`);
  const transport = {
    ...(ldapCaFile !== undefined ? { caFile: ldapCaFile } : {}),
    ...(startTls === 'true' ? { startTls: true } : {}),
    ...(allowPlaintext === 'true' ? { allowPlaintext: true } : {}),
  };
  for (const url of urls) {
    const refusal = plaintextRefusal(url, transport);
    if (refusal !== undefined) throw new UsageError(`STONEY_LDAP_URL: ${refusal}`);
  }
  const imageRoots = (get('STONEY_IMAGE_ROOTS') ?? '/var/virtualization').split(':').filter(Boolean);
  for (const r of imageRoots) if (!path.isAbsolute(r)) throw new UsageError(`STONEY_IMAGE_ROOTS: ${r} is not an absolute path`);
  const allowedRoots = (get('STONEY_ALLOWED_ROOTS') ?? DEFAULT_ALLOWED_ROOTS.join(':')).split(':').filter(Boolean);
  for (const r of allowedRoots) {
    if (!path.isAbsolute(r) || path.resolve(r) === '/') throw new UsageError(`STONEY_ALLOWED_ROOTS: ${r} is not an absolute path below /`);
  }
  const metricsListen = get('STONEY_METRICS_LISTEN');
  const controlLease: LeaseTiming = {
    durationMs: positiveInt('STONEY_CONTROL_LEASE_S', get('STONEY_CONTROL_LEASE_S'), defaultLeaseTiming.durationMs / 1000) * 1000,
    renewMs: positiveInt('STONEY_CONTROL_LEASE_RENEW_S', get('STONEY_CONTROL_LEASE_RENEW_S'), defaultLeaseTiming.renewMs / 1000) * 1000,
  };
  const leaseProblem = leaseTimingProblem(controlLease);
  if (leaseProblem !== undefined) throw new UsageError(`STONEY_CONTROL_LEASE_S / STONEY_CONTROL_LEASE_RENEW_S: ${leaseProblem}`);
  return {
    ldap: {
      url: urls[0] as string,
      ...(urls.length > 1 ? { urls } : {}),
      bindDn: required('STONEY_LDAP_BIND_DN'),
      passwordFile: required('STONEY_LDAP_PASSWORD_FILE'),
      baseDn: required('STONEY_LDAP_BASE_DN'),
      ...transport,
    },
    nodeName: get('STONEY_NODE_NAME'),
    libvirtUri: get('STONEY_LIBVIRT_URI') ?? 'qemu:///system',
    imageRoots,
    allowedRoots,
    logLevel: get('STONEY_LOG_LEVEL') ?? '',
    pollIntervalMs: positiveInt('STONEY_POLL_INTERVAL_MS', get('STONEY_POLL_INTERVAL_MS'), 1000),
    changeFeed,
    feedStateDir,
    ldapCaFile,
    ldapStartTls: startTls === 'true',
    policy: {
      mergeConcurrency: positiveInt('STONEY_MERGE_CONCURRENCY', get('STONEY_MERGE_CONCURRENCY'), defaultBatchPolicy.mergeConcurrency),
      claimTimeoutMs: positiveInt('STONEY_CLAIM_TIMEOUT_S', get('STONEY_CLAIM_TIMEOUT_S'), defaultBatchPolicy.claimTimeoutMs / 1000) * 1000,
      stepTimeoutMs: positiveInt('STONEY_STEP_TIMEOUT_S', get('STONEY_STEP_TIMEOUT_S'), defaultBatchPolicy.stepTimeoutMs / 1000) * 1000,
      restoreDecisionTimeoutMs: positiveInt('STONEY_RESTORE_DECISION_TIMEOUT_S', get('STONEY_RESTORE_DECISION_TIMEOUT_S'), DEFAULT_RESTORE_DECISION_TIMEOUT_MS / 1000) * 1000,
    },
    controlLease,
    timeZone: get('STONEY_TIMEZONE'),
    concurrency: positiveInt('STONEY_STEP_CONCURRENCY', get('STONEY_STEP_CONCURRENCY'), 4),
    runDir: get('STONEY_RUN_DIR') ?? '/run/stoney-backup',
    // STONEY_SHUTDOWN_TIMEOUT_S is still accepted (existing files name it) but has no use: restores save the VM at once.
    metricsListen: metricsListen === undefined ? undefined : parseListenAddress(metricsListen),
    configFile,
  };
}

export function requireNodeName(c: Config): string {
  if (!c.nodeName) throw new UsageError('STONEY_NODE_NAME is not set: which sstNode is this host?');
  return c.nodeName;
}
