import { describe, expect, it } from 'vitest';
import { decideStandby, defaultLeaseTiming, holderDeadline, leaseTimingProblem, leaseToken, tokenHolder, type LeaseView } from '../../src/control/leaseDecision.js';

const timing = { durationMs: 15_000, renewMs: 3_000 };
const ME = 'host-b/42/abcdef';
const OTHER = 'host-a/17/012345';
const T0 = new Date('2026-11-30T01:00:00.000Z');
const at = (ms: number) => new Date(T0.getTime() + ms);

function view(over: Partial<LeaseView>): LeaseView {
  return { exists: true, holder: leaseToken(OTHER, 7), writtenAt: T0, serverNow: T0, ...over };
}

describe('decideStandby', () => {
  it('creates the lease entry when there is none', () => {
    expect(decideStandby({ exists: false, holder: undefined, writtenAt: undefined, serverNow: at(5) }, timing, ME)).toEqual({ kind: 'create' });
  });

  it('claims a released lease at once, whatever the times', () => {
    expect(decideStandby(view({ holder: undefined, serverNow: at(1) }), timing, ME)).toEqual({ kind: 'claim' });
  });

  it('waits while the holder renewed within the lease duration by the server clock', () => {
    expect(decideStandby(view({ serverNow: at(14_999) }), timing, ME)).toEqual({ kind: 'wait', holder: leaseToken(OTHER, 7), remainingMs: 1 });
  });

  it('takes over the exact token it saw once the lease is as old as its duration', () => {
    expect(decideStandby(view({ serverNow: at(15_000) }), timing, ME)).toEqual({ kind: 'take-over', expected: leaseToken(OTHER, 7) });
    expect(decideStandby(view({ serverNow: at(60_000) }), timing, ME)).toEqual({ kind: 'take-over', expected: leaseToken(OTHER, 7) });
  });

  it('judges only by the two server times: a clock probe older than the lease write is no expiry', () => {
    // A probe read from a lagging replica, or a stale read: "now" before the write.
    expect(decideStandby(view({ serverNow: at(-5_000) }), timing, ME)).toMatchObject({ kind: 'wait', remainingMs: 20_000 });
  });

  it('waits when a server time is missing (cannot judge: never two active)', () => {
    expect(decideStandby(view({ writtenAt: undefined, serverNow: at(99_000) }), timing, ME)).toEqual({ kind: 'wait', holder: leaseToken(OTHER, 7), remainingMs: undefined });
    expect(decideStandby(view({ serverNow: undefined }), timing, ME)).toMatchObject({ kind: 'wait' });
  });

  it('takes back a token of its own at once (a renewal that landed after it gave up)', () => {
    expect(decideStandby(view({ holder: leaseToken(ME, 3), serverNow: at(1) }), timing, ME)).toEqual({ kind: 'take-over', expected: leaseToken(ME, 3) });
  });

  it('does not mistake a holder whose id merely starts like its own', () => {
    expect(decideStandby(view({ holder: leaseToken(`${ME}x`, 3), serverNow: at(1) }), timing, ME)).toMatchObject({ kind: 'wait' });
  });
});

describe('the holder side', () => {
  it('stops one renew interval before a standby can see the lease expire', () => {
    expect(holderDeadline(1_000, timing)).toBe(13_000);
  });

  it('a token names its holder and changes with every write', () => {
    expect(tokenHolder(leaseToken(OTHER, 12))).toBe(OTHER);
    expect(leaseToken(OTHER, 12)).not.toBe(leaseToken(OTHER, 13));
  });

  it('refuses a renew interval above a third of the lease; the defaults pass', () => {
    expect(leaseTimingProblem(defaultLeaseTiming)).toBeUndefined();
    expect(leaseTimingProblem({ durationMs: 15_000, renewMs: 5_000 })).toBeUndefined();
    expect(leaseTimingProblem({ durationMs: 15_000, renewMs: 6_000 })).toMatch(/three renew intervals/);
  });

  it('the defaults let a standby take over well within 30 s (expiry + one look)', () => {
    expect(defaultLeaseTiming.durationMs + defaultLeaseTiming.renewMs).toBeLessThanOrEqual(20_000);
  });
});
