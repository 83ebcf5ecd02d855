import type { Logger } from 'pino';
import type { ChangeEvent, ChangeFeed } from './types.js';
import type { LeafScanner, LeafScope, ScannedLeaf } from './leafScan.js';
import { normalizeDn } from './ditPaths.js';

export interface PollingChangeFeedOptions {
  /** Pause between the end of one poll and the start of the next, ms (default 1000). */
  intervalMs?: number;
  /**
   * Emit `resync` this often, ms (default 600 000; 0 = never): polling sees
   * leaves only, so a consumer that keeps VMs and settings in memory (the
   * control daemon) learns of their changes by re-reading then.
   */
  fullResyncIntervalMs?: number;
  logger?: Logger;
  /** Told after each poll whether the directory answered: the metrics' view of the connection. */
  onConnectionChange?: (connected: boolean) => void;
}

/**
 * ChangeFeed by polling: every interval, one indexed search for the leaves in
 * scope, compared with the previous result. Emits `leaf` for every leaf that
 * is new, changed (mode, state, return value, entryCSN) or gone, and
 * `resync` once the first poll has succeeded (at start, and again after a
 * stretch of failed polls without a baseline). Polls never overlap; a failed
 * poll is logged and retried next tick. Consumers re-read the leaf
 * (reconcile), so a spurious event is harmless and none is lost.
 */
export class PollingChangeFeed implements ChangeFeed {
  private readonly intervalMs: number;
  private readonly logger: Logger | undefined;
  private known: Map<string, { dn: string; fingerprint: string }> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private onChange: ((e: ChangeEvent) => void) | undefined;
  private stopped = true;
  private failures = 0;

  constructor(
    private readonly source: LeafScanner,
    private readonly scope: LeafScope = {},
    private readonly options: PollingChangeFeedOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? 1000;
    this.logger = options.logger;
  }

  /** Resolves after the first poll (successful or not); later polls run on a timer. */
  async start(onChange: (e: ChangeEvent) => void): Promise<void> {
    if (!this.stopped) throw new Error('PollingChangeFeed already started');
    this.stopped = false;
    this.onChange = onChange;
    this.known = undefined;
    this.failures = 0;
    await this.tick();
    const every = this.options.fullResyncIntervalMs ?? 600_000;
    if (every > 0 && !this.stopped) this.resyncTimer = setInterval(() => this.emit({ kind: 'resync', dn: '' }), every);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    this.resyncTimer = undefined;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
    this.onChange = undefined;
  }

  /** Runs one poll now (unless one is running) and schedules the next. */
  private async tick(): Promise<void> {
    if (this.stopped) return;
    if (!this.running) {
      this.running = this.poll().finally(() => {
        this.running = undefined;
      });
    }
    await this.running;
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.tick();
    }, this.intervalMs);
  }

  private async poll(): Promise<void> {
    let leaves: ScannedLeaf[];
    try {
      leaves = await this.source.scanLeaves(this.scope);
    } catch (err) {
      this.failures += 1;
      if (this.failures === 1) this.options.onConnectionChange?.(false);
      // Log the first failure and then every 60th, not every second.
      if (this.failures === 1 || this.failures % 60 === 0) {
        this.logger?.warn({ err, failures: this.failures, scope: this.scope }, 'polling the directory for leaf changes failed; retrying');
      }
      return;
    }
    if (this.stopped) return;
    if (this.failures > 0 || this.known === undefined) this.options.onConnectionChange?.(true);
    if (this.failures > 0) this.logger?.info({ failures: this.failures }, 'polling the directory works again');
    this.failures = 0;

    const next = new Map<string, { dn: string; fingerprint: string }>();
    for (const l of leaves) {
      next.set(normalizeDn(l.dn), { dn: l.dn, fingerprint: JSON.stringify([l.mode, l.state, l.returnValue, l.version]) });
    }
    const previous = this.known;
    this.known = next;
    if (previous === undefined) {
      this.emit({ kind: 'resync', dn: '' });
      return;
    }
    for (const [key, now] of next) {
      if (previous.get(key)?.fingerprint !== now.fingerprint) this.emit({ kind: 'leaf', dn: now.dn });
    }
    for (const [key, before] of previous) {
      if (!next.has(key)) this.emit({ kind: 'leaf', dn: before.dn, deleted: true });
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
}
