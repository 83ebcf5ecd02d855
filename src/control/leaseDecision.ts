/**
 * The pure part of the control lease: which control daemon may drive the
 * site. Several may run; the one whose token is in the directory's lease
 * entry is active, the others wait (standby).
 *
 * Time: a standby judges expiry only by the directory server's clock — the
 * server time of the lease's last write against a server time no earlier
 * than "now" that the standby obtained by a write of its own (both read as
 * entryCSN, microseconds; see LdapLeaseStore). Host clocks may disagree by
 * any amount without two daemons becoming active. The holder itself needs
 * no server time: it counts on its own monotonic clock from the moment it
 * *sent* a renewal that succeeded (the server wrote it later than that), and
 * stops writing a safety margin before a standby could possibly see the
 * lease expired.
 */

export interface LeaseTiming {
  /** a lease not renewed for this long (server time) may be taken over, ms */
  durationMs: number;
  /** the holder renews, and a standby looks, this often, ms */
  renewMs: number;
}

export const defaultLeaseTiming: LeaseTiming = { durationMs: 15_000, renewMs: 3_000 };

/** What a contender read of the lease, all times by the directory server's clock. */
export interface LeaseView {
  /** false: the lease entry does not exist yet */
  exists: boolean;
  /** the holder's token; undefined: nobody holds the lease (released) */
  holder: string | undefined;
  /** server time of the lease entry's last write */
  writtenAt: Date | undefined;
  /** a server time no later than the moment of reading: the reader's own clock probe */
  serverNow: Date | undefined;
}

export type LeaseStep =
  /** no lease entry: add it, holding it */
  | { kind: 'create' }
  /** the lease is free (released): add a holder; fails if another was quicker */
  | { kind: 'claim' }
  /** expired by the server's clock: swap the seen token for ours; fails if it changed meanwhile */
  | { kind: 'take-over'; expected: string }
  /** held and not expired (or not judgeable): look again later */
  | { kind: 'wait'; holder: string; remainingMs: number | undefined };

/**
 * What a standby (`me`) does after looking at the lease. A token of its own
 * (a renewal that landed after it stopped counting on the lease) is taken
 * back at once: while it is there, nobody else can have been active.
 */
export function decideStandby(view: LeaseView, timing: LeaseTiming, me: string): LeaseStep {
  if (!view.exists) return { kind: 'create' };
  if (view.holder === undefined) return { kind: 'claim' };
  if (tokenHolder(view.holder) === me) return { kind: 'take-over', expected: view.holder };
  // Without both server times nothing can be judged: waiting is the safe side.
  if (view.writtenAt === undefined || view.serverNow === undefined) return { kind: 'wait', holder: view.holder, remainingMs: undefined };
  const age = view.serverNow.getTime() - view.writtenAt.getTime();
  if (age >= timing.durationMs) return { kind: 'take-over', expected: view.holder };
  return { kind: 'wait', holder: view.holder, remainingMs: timing.durationMs - age };
}

/**
 * Until when (on the holder's monotonic clock) the holder may write, given
 * the send time of its last successful write of the lease. The server wrote
 * the lease at or after `sentAt`, so a standby sees it expire no earlier than
 * sentAt + duration; the holder stops one renewal interval before that, so a
 * write it sends in time is not overtaken by a new holder's writes.
 */
export function holderDeadline(sentAtMs: number, timing: LeaseTiming): number {
  return sentAtMs + timing.durationMs - timing.renewMs;
}

/** The token written into the lease: who holds it and how often it has been written (each write changes it, so every swap is a compare-and-swap). */
export function leaseToken(holderId: string, count: number): string {
  return `${holderId} #${count}`;
}

/** The holder id in a token (for logs: who is active). */
export function tokenHolder(token: string): string {
  return token.replace(/ #\d+$/, '');
}

/** Refuses timings that could let two daemons write at once or flap. */
export function leaseTimingProblem(t: LeaseTiming): string | undefined {
  if (t.renewMs * 3 > t.durationMs) {
    return `the lease (${t.durationMs / 1000} s) must be at least three renew intervals (${t.renewMs / 1000} s): the holder stops one interval before expiry and must be able to miss one renewal`;
  }
  return undefined;
}
