import { describe, expect, it } from 'vitest';
import { DateTime } from 'luxon';
import { formatLeafName, isLeafName, parseLeafName, protocolTimestamp } from '../../src/domain/leafName.js';

describe('formatLeafName', () => {
  it('writes UTC as YYYYMMDDTHHMMSSZ', () => {
    expect(formatLeafName(DateTime.fromISO('2012-10-02T01:00:00Z', { zone: 'utc' }))).toBe('20121002T010000Z');
    expect(formatLeafName(new Date(Date.UTC(2012, 9, 2, 1, 45, 13)))).toBe('20121002T014513Z');
  });

  it('converts local times to UTC (03:00 Zurich in summer → 010000Z, in winter → 020000Z)', () => {
    expect(formatLeafName(DateTime.fromISO('2012-10-02T03:00:00', { zone: 'Europe/Zurich' }))).toBe('20121002T010000Z');
    expect(formatLeafName(DateTime.fromISO('2026-01-15T03:00:00', { zone: 'Europe/Zurich' }))).toBe('20260115T020000Z');
    expect(formatLeafName(DateTime.fromISO('2026-12-31T23:30:00-05:00', { setZone: true }))).toBe('20270101T043000Z');
  });

  it('drops milliseconds', () => {
    expect(formatLeafName(new Date(Date.UTC(2026, 6, 1, 1, 0, 0, 999)))).toBe('20260701T010000Z');
  });
});

describe('parseLeafName', () => {
  it('reads a leaf name as a UTC instant', () => {
    const t = parseLeafName('20121002T010000Z');
    expect(t?.toMillis()).toBe(Date.UTC(2012, 9, 2, 1, 0, 0));
    expect(t?.zoneName).toBe('UTC');
    expect(parseLeafName('20260329T235959Z')?.toMillis()).toBe(Date.UTC(2026, 2, 29, 23, 59, 59));
  });

  it('rejects anything else', () => {
    for (const s of [
      '20121302T010000Z', // month 13
      '20121002T016000Z', // minute 60
      '20121002T010060Z', // second 60
      '20120230T010000Z', // 30 February
      '20130229T010000Z', // 29 February, not a leap year
      '20121000T010000Z', // day 0
      '20121002T010000', // no Z
      '20121002t010000z',
      '2012-10-02T01:00:00Z',
      '20121002T010000Z ',
      ' 20121002T010000Z',
      '20121002T010000Z\n',
      '120121002T010000Z',
      '',
      'backup',
    ]) {
      expect(parseLeafName(s), s).toBeUndefined();
      expect(isLeafName(s), s).toBe(false);
    }
  });

  it('rejects hour 24 (it is not a leaf name; it would round-trip to the next day)', () => {
    expect(parseLeafName('20121002T240000Z')).toBeUndefined();
    expect(isLeafName('20121002T240000Z')).toBe(false);
  });

  it('only accepts names that format back to themselves', () => {
    for (const s of ['20121002T240000Z', '20121002T010000Z', '20280229T235959Z']) {
      const t = parseLeafName(s);
      if (t !== undefined) expect(formatLeafName(t), s).toBe(s);
    }
  });

  it('accepts 29 February in a leap year', () => {
    expect(isLeafName('20280229T000000Z')).toBe(true);
  });
});

describe('round trip', () => {
  it('format(parse(x)) === x and parse(format(t)) === t (to the second)', () => {
    for (const s of ['20121002T010000Z', '20260329T010000Z', '20261025T003000Z', '19991231T235959Z', '20000101T000000Z']) {
      const t = parseLeafName(s);
      expect(t).toBeDefined();
      expect(formatLeafName(t!)).toBe(s);
    }
    const t = DateTime.fromMillis(Date.UTC(2026, 9, 25, 0, 30, 0), { zone: 'utc' });
    expect(parseLeafName(formatLeafName(t))?.toMillis()).toBe(t.toMillis());
  });

  it('sorts chronologically as plain strings', () => {
    const names = ['20270101T000000Z', '20261231T235959Z', '20261002T010000Z', '20121002T010000Z'];
    expect([...names].sort()).toEqual(['20121002T010000Z', '20261002T010000Z', '20261231T235959Z', '20270101T000000Z']);
  });
});

describe('protocolTimestamp', () => {
  it('formats the given instant like a leaf name', () => {
    expect(protocolTimestamp(new Date(Date.UTC(2012, 9, 2, 1, 0, 11)))).toBe('20121002T010011Z');
    expect(isLeafName(protocolTimestamp())).toBe(true);
  });
});
