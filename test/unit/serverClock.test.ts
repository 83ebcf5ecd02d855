import { describe, expect, it } from 'vitest';
import { ServerClock } from '../../src/control/ServerClock.js';

const DN = 'ou=20260101T000000Z,ou=backup,sstVirtualMachine=a,o=test';

describe('ServerClock', () => {
  it('learns how far the server clock is off from the echo of its own writes (median, whole-second stamps)', () => {
    let local = 1_000_000_000_000; // this host
    const skew = -300_000; // the server is 5 min behind
    const clock = new ServerClock(() => local);
    expect(clock.offsetMs).toBe(0);
    for (let i = 0; i < 5; i++) {
      clock.wrote(`${DN}${i}`, 'snapshot');
      const serverAt = Math.floor((local + skew - 40) / 1000) * 1000; // stamped just before the answer, truncated to the second
      clock.observed(`${DN}${i}`.toUpperCase(), 'snapshot', new Date(serverAt));
      local += 1_234;
    }
    expect(Math.abs(clock.offsetMs - skew)).toBeLessThanOrEqual(600);
    expect(Math.abs(clock.now().getTime() - (local + skew))).toBeLessThanOrEqual(600);
  });

  it('ignores another writer\'s later state, entries it did not write, and missing stamps', () => {
    const clock = new ServerClock(() => 50_000);
    clock.wrote(DN, 'snapshot');
    expect(clock.observed(DN, 'snapshotting', new Date(9_000_000))).toBeUndefined(); // a node claimed first
    expect(clock.observed(DN, 'snapshot', new Date(9_000_000))).toBeUndefined(); // consumed already
    expect(clock.observed('ou=other,o=test', 'snapshot', new Date(9_000_000))).toBeUndefined();
    clock.wrote(DN, 'merge');
    expect(clock.observed(DN, 'merge', undefined)).toBeUndefined();
    expect(clock.offsetMs).toBe(0);
  });

  it('one outlier does not move the median', () => {
    let local = 0;
    const clock = new ServerClock(() => local);
    const sample = (offset: number) => {
      clock.wrote(DN, 'merge');
      clock.observed(DN, 'merge', new Date(local + offset - 500));
      local += 1000;
    };
    for (let i = 0; i < 4; i++) sample(10_000);
    sample(900_000); // an echo that came very late (the feed was down)
    expect(clock.offsetMs).toBe(10_000);
  });
});
