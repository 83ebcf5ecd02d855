import pino, { type Logger } from 'pino';
import { UsageError, errorMessage } from '../domain/errors.js';
import { connectDirectory } from '../directory/connect.js';
import { providerUrls } from '../directory/providerUrls.js';
import type { LdapBackupDirectory } from '../directory/LdapBackupDirectory.js';
import { createChangeFeed } from '../directory/createChangeFeed.js';
import type { LeafScope } from '../directory/leafScan.js';
import type { ChangeFeed } from '../directory/types.js';
import { Virsh } from '../hypervisor/Virsh.js';
import { QemuImg } from '../hypervisor/QemuImg.js';
import { loadConfig, type Config } from './config.js';
import { ExitCode } from './exitCodes.js';
import type { BackupMetrics } from '../metrics/BackupMetrics.js';

/** An error that ends the command with a given exit code and a plain message. */
export class CliError extends Error {
  override name = 'CliError';
  constructor(message: string, readonly exitCode: number) {
    super(message);
  }
}

export interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
}

export const processIo: Io = {
  out: (l) => process.stdout.write(`${l}\n`),
  err: (l) => process.stderr.write(`${l}\n`),
};

/**
 * What every command gets: configuration, a logger (JSON lines on stderr for
 * commands, stdout for daemons), an abort signal for SIGINT/SIGTERM and a
 * list of cleanups that always run.
 */
export class Runtime {
  readonly abort = new AbortController();
  private readonly cleanups: (() => Promise<void>)[] = [];
  private directory: LdapBackupDirectory | undefined;

  private constructor(readonly config: Config, readonly logger: Logger, readonly io: Io) {}

  static async create(configFile: string | undefined, opts: { daemon: boolean; verbose?: boolean; io?: Io }): Promise<Runtime> {
    const config = await loadConfig(configFile);
    const level = config.logLevel || (opts.verbose ? 'info' : opts.daemon ? 'info' : 'warn');
    if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(level)) {
      throw new UsageError(`STONEY_LOG_LEVEL: ${JSON.stringify(level)} is not a pino level`);
    }
    const logger = pino({ level, base: { pid: process.pid } }, pino.destination({ fd: opts.daemon ? 1 : 2, sync: true }));
    return new Runtime(config, logger, opts.io ?? processIo);
  }

  onCleanup(fn: () => Promise<void>): void {
    this.cleanups.unshift(fn);
  }

  async connect(): Promise<LdapBackupDirectory> {
    if (this.directory) return this.directory;
    try {
      this.directory = await connectDirectory(this.config.ldap);
    } catch (err) {
      throw new CliError(`cannot use the directory at ${providerUrls(this.config.ldap).join(' ')} as ${this.config.ldap.bindDn}: ${errorMessage(err)}`, ExitCode.directoryUnavailable);
    }
    const d = this.directory;
    this.onCleanup(() => d.close());
    return d;
  }

  async hypervisor(): Promise<{ virsh: Virsh; qemuImg: QemuImg }> {
    const virsh = new Virsh(this.config.libvirtUri, this.logger);
    try {
      await virsh.domainExists('stoney-backup-connection-check');
    } catch (err) {
      throw new CliError(`libvirt does not answer on ${this.config.libvirtUri}: ${errorMessage(err)}`, ExitCode.libvirtUnavailable);
    }
    return { virsh, qemuImg: new QemuImg(this.logger) };
  }

  /** The configured change feed (sync or poll) for a daemon watching `scope`. */
  changeFeed(directory: LdapBackupDirectory, scope: LeafScope, metrics?: BackupMetrics): ChangeFeed {
    const c = this.config;
    return createChangeFeed(c.changeFeed, {
      ...c.ldap, scope, stateDir: c.feedStateDir, pollIntervalMs: c.pollIntervalMs, logger: this.logger,
      ...(metrics ? { onConnectionChange: metrics.connectionChanged } : {}),
    }, directory);
  }

  /**
   * A daemon's metrics, served on STONEY_METRICS_LISTEN until close(); none
   * (and no port, and prom-client not even loaded) when the key is not set.
   */
  async startMetrics(daemon: 'node' | 'control'): Promise<BackupMetrics | undefined> {
    const at = this.config.metricsListen;
    if (at === undefined) return undefined;
    const [{ BackupMetrics }, { MetricsServer }] = await Promise.all([import('../metrics/BackupMetrics.js'), import('../metrics/MetricsServer.js')]);
    const metrics = new BackupMetrics({ daemon });
    let server;
    try {
      server = await MetricsServer.start(metrics, at, this.logger);
    } catch (err) {
      throw new UsageError(`STONEY_METRICS_LISTEN: cannot listen on ${at.host}:${at.port}: ${errorMessage(err)}`);
    }
    this.onCleanup(() => server.close());
    return metrics;
  }

  /** Resolves on the first SIGINT/SIGTERM; the abort signal fires too. */
  untilSignal(): Promise<string> {
    return new Promise((resolve) => {
      const handler = (sig: string) => {
        this.logger.info({ signal: sig }, 'stopping');
        this.abort.abort(new Error(`interrupted by ${sig}`));
        resolve(sig);
      };
      process.once('SIGINT', () => handler('SIGINT'));
      process.once('SIGTERM', () => handler('SIGTERM'));
    });
  }

  async close(): Promise<void> {
    for (const fn of this.cleanups.splice(0)) {
      await fn().catch((err: unknown) => this.logger.error({ err: errorMessage(err) }, 'cleanup failed'));
    }
    this.logger.flush();
  }
}
