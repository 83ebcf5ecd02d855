import os from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackupError, errorMessage } from '../domain/errors.js';
import { decideStandby, holderDeadline, leaseToken, tokenHolder, type LeaseTiming, type LeaseView } from './leaseDecision.js';

/** The lease's directory operations (LdapLeaseStore). */
export interface LeaseStore {
  look(who: string): Promise<LeaseView>;
  create(token: string): Promise<boolean>;
  swap(expected: string | undefined, next: string | undefined): Promise<boolean>;
}

/** A write attempted by a control daemon that does not hold the lease (any more). */
export class LeaseLostError extends Error {
  override name = 'LeaseLostError';
}

/** One period of being the active daemon. */
export interface LeaseTerm {
  /** server time of the lease's last write before this term (the previous holder's last renewal or release) */
  previousWriteAt: Date | undefined;
  /** settles with the reason when the lease is lost (taken over, or not renewed in time) */
  lost: Promise<string>;
  /** the directory server's clock minus this host's, as the lease look saw it (ms; undefined when unknown) */
  serverOffsetMs: number | undefined;
}

/**
 * The control lease as one daemon holds it: wait as a standby until the
 * lease can be had, then renew it every interval until released or lost.
 * `held` is what every directory write checks first (leaseGuardedDirectory):
 * it turns false the moment the lease is lost, or when no renewal has
 * succeeded for the time the holder may rely on (holderDeadline), even with
 * a renewal still on its way — an active daemon that lost the directory
 * stops writing on its own clock, before any standby may take over.
 */
export class ControlLease {
  /** who this process is, in the lease and in logs: host, pid, and a random part so a restarted process is a new holder */
  readonly id = `${os.hostname()}/${process.pid}/${randomBytes(3).toString('hex')}`;
  private token: string | undefined;
  private count = 0;
  private deadline = 0;
  private renewTimer: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private onLost: ((reason: string) => void) | undefined;
  private readonly log: Logger;

  /** `onLook`: whether a standby's look reached the directory (its connection state for metrics). */
  constructor(private readonly store: LeaseStore, private readonly timing: LeaseTiming, logger: Logger, private readonly onLook?: (reachable: boolean) => void) {
    this.log = logger.child({ lease: this.id });
  }

  get held(): boolean {
    return this.token !== undefined && performance.now() < this.deadline;
  }

  assertHeld(): void {
    if (!this.held) throw new LeaseLostError('this control daemon does not hold the control lease (another one is active)');
  }

  /**
   * Wait (standby) until this daemon holds the lease; undefined when `signal`
   * aborted first. Looks every renew interval; an unreachable directory is
   * waited out, a refusal that will not pass (missing schema, ACL) rejects.
   */
  async acquire(signal: AbortSignal): Promise<LeaseTerm | undefined> {
    let seen: string | undefined;
    while (!signal.aborted) {
      try {
        const view = await this.store.look(this.id).catch((err: unknown) => {
          this.onLook?.(false);
          throw err;
        });
        const lookedAt = Date.now();
        this.onLook?.(true);
        const step = decideStandby(view, this.timing, this.id);
        if (step.kind === 'wait') {
          // The token changes with every renewal; a standby says so once per active daemon.
          const active = tokenHolder(step.holder);
          if (active !== seen) this.log.info({ active }, 'standby: another control daemon holds the lease');
          seen = active;
        } else {
          const next = leaseToken(this.id, ++this.count);
          const sentAt = performance.now();
          const won = step.kind === 'create' ? await this.store.create(next) : await this.store.swap(step.kind === 'take-over' ? step.expected : undefined, next);
          if (won && !signal.aborted) {
            const lost = new Promise<string>((resolve) => {
              this.onLost = resolve;
            });
            this.hold(next, sentAt);
            this.log.info({ how: step.kind, ...(step.kind === 'take-over' ? { previous: tokenHolder(step.expected) } : {}) }, 'control lease acquired: this daemon is active');
            return { previousWriteAt: view.exists ? view.writtenAt : undefined, lost, serverOffsetMs: view.serverNow ? view.serverNow.getTime() - lookedAt : undefined };
          }
          if (won) await this.release();
        }
      } catch (err) {
        // A refusal the site must fix (schema, ACL) would leave the site without any active daemon, silently: give up.
        if (err instanceof BackupError && !err.retryable) throw err;
        this.log.warn({ err: errorMessage(err) }, 'cannot read the control lease; trying again');
      }
      await sleep(this.timing.renewMs, undefined, { signal }).catch(() => undefined);
    }
    return undefined;
  }

  /** Give the lease up (SIGTERM) so that a standby takes over at its next look, not after expiry. */
  async release(): Promise<void> {
    this.stopTimers();
    this.token = undefined;
    this.onLost = undefined;
    try {
      // Read what is there: a renewal may have landed after this daemon stopped counting on it.
      const view = await this.store.look(this.id);
      if (view.holder !== undefined && tokenHolder(view.holder) === this.id && (await this.store.swap(view.holder, undefined))) {
        this.log.info('control lease released');
      }
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'cannot release the control lease; a standby takes over when it expires');
    }
  }

  private hold(token: string, sentAt: number): void {
    this.token = token;
    this.deadline = holderDeadline(sentAt, this.timing);
    this.armExpiry();
    this.renewTimer = setTimeout(() => void this.renew(), this.timing.renewMs);
  }

  private async renew(): Promise<void> {
    const current = this.token;
    if (current === undefined) return;
    const next = leaseToken(this.id, ++this.count);
    const sentAt = performance.now();
    try {
      const ok = await this.store.swap(current, next);
      if (this.token !== current) return; // lost or released meanwhile
      if (!ok) {
        this.lose('another control daemon took the lease over');
        return;
      }
      this.token = next;
      this.deadline = holderDeadline(sentAt, this.timing);
      this.armExpiry();
    } catch (err) {
      if (this.token !== current) return;
      this.log.warn({ err: errorMessage(err), stopsWritingInMs: Math.max(0, Math.round(this.deadline - performance.now())) }, 'cannot renew the control lease');
    }
    this.renewTimer = setTimeout(() => void this.renew(), this.timing.renewMs);
  }

  private armExpiry(): void {
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryTimer = setTimeout(() => {
      if (performance.now() >= this.deadline) this.lose('the lease was not renewed in time (directory unreachable?)');
    }, Math.max(0, this.deadline - performance.now()));
  }

  private lose(reason: string): void {
    if (this.token === undefined) return;
    this.stopTimers();
    this.token = undefined;
    this.log.error({ reason }, 'control lease lost: this daemon stops driving the site');
    this.onLost?.(reason);
    this.onLost = undefined;
  }

  private stopTimers(): void {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.renewTimer = undefined;
    this.expiryTimer = undefined;
  }
}
