import { describe, expect, it } from 'vitest';
import { DateTime } from 'luxon';
import {
  cronMatches,
  nextPlannedRun,
  parseCron,
  plannedRunLeafName,
  plannedRunsBetween,
  type CronSpec,
} from '../../src/domain/cronSchedule.js';
import { BackupError } from '../../src/domain/errors.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

function cron(text: string): CronSpec {
  const [minute = '', hour = '', day = '', month = '', dayOfWeek = ''] = text.split(' ');
  return parseCron({ minute, hour, day, month, dayOfWeek });
}

const utc = (iso: string) => DateTime.fromISO(iso, { zone: 'utc' });

/** Planned runs as ISO strings in UTC, e.g. 2026-07-01T01:00:00Z. */
function runs(text: string, from: string, to: string, zone: string): string[] {
  return plannedRunsBetween(cron(text), utc(from), utc(to), zone).map((d) => d.toFormat("yyyy-MM-dd'T'HH:mm:ss'Z'"));
}

function parseError(fields: Partial<Record<'minute' | 'hour' | 'day' | 'month' | 'dayOfWeek', string>>): BackupError {
  try {
    parseCron({ minute: '0', hour: '3', day: '*', month: '*', dayOfWeek: '*', ...fields });
  } catch (err) {
    expect(err).toBeInstanceOf(BackupError);
    return err as BackupError;
  }
  throw new Error(`parseCron accepted ${JSON.stringify(fields)}`);
}

const sorted = (s: ReadonlySet<number>) => [...s].sort((a, b) => a - b);

describe('parseCron', () => {
  it('parses the seed schedule (daily at 03:00)', () => {
    const spec = parseCron({ minute: '0', hour: '3', day: '*', month: '*', dayOfWeek: '*' });
    expect(sorted(spec.minutes)).toEqual([0]);
    expect(sorted(spec.hours)).toEqual([3]);
    expect(spec.days.size).toBe(31);
    expect(spec.months.size).toBe(12);
    expect(sorted(spec.daysOfWeek)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(spec.dayRestricted).toBe(false);
    expect(spec.dayOfWeekRestricted).toBe(false);
    expect(spec.text).toBe('0 3 * * *');
  });

  it('parses lists, ranges and steps', () => {
    expect(sorted(cron('*/15 * * * *').minutes)).toEqual([0, 15, 30, 45]);
    expect(sorted(cron('1-30/5 * * * *').minutes)).toEqual([1, 6, 11, 16, 21, 26]);
    expect(sorted(cron('5/20 * * * *').minutes)).toEqual([5, 25, 45]);
    expect(sorted(cron('0 1,2,22-23 * * *').hours)).toEqual([1, 2, 22, 23]);
    expect(sorted(cron('0 */6 * * *').hours)).toEqual([0, 6, 12, 18]);
    expect(sorted(cron('0 0 1-31/10 * *').days)).toEqual([1, 11, 21, 31]);
    expect(sorted(cron('0 0 * 3-4,11 *').months)).toEqual([3, 4, 11]);
  });

  it('folds day of week 7 onto Sunday (0)', () => {
    expect(sorted(cron('0 0 * * 7').daysOfWeek)).toEqual([0]);
    expect(sorted(cron('0 0 * * 5-7').daysOfWeek)).toEqual([0, 5, 6]);
    expect(sorted(cron('0 0 * * 0,7').daysOfWeek)).toEqual([0]);
    expect(sorted(cron('0 0 * * */2').daysOfWeek)).toEqual([0, 2, 4, 6]);
  });

  it('accepts month and day names, case-insensitively', () => {
    expect(sorted(cron('0 0 * jan,Jul,DEC *').months)).toEqual([1, 7, 12]);
    expect(sorted(cron('0 0 * feb-apr *').months)).toEqual([2, 3, 4]);
    expect(sorted(cron('0 0 * * mon-fri').daysOfWeek)).toEqual([1, 2, 3, 4, 5]);
    expect(sorted(cron('0 0 * * SUN,sat').daysOfWeek)).toEqual([0, 6]);
  });

  it('trims surrounding white space of a field', () => {
    const spec = parseCron({ minute: ' 0', hour: '3 ', day: '*', month: '*', dayOfWeek: ' * ' });
    expect(sorted(spec.hours)).toEqual([3]);
    expect(spec.dayOfWeekRestricted).toBe(false);
  });

  it('treats a day field as restricting unless it starts with *', () => {
    expect(cron('0 0 13 * *').dayRestricted).toBe(true);
    expect(cron('0 0 */2 * *').dayRestricted).toBe(false);
    expect(cron('0 0 * * 1').dayOfWeekRestricted).toBe(true);
    expect(cron('0 0 * * */2').dayOfWeekRestricted).toBe(false);
  });

  it('rejects out-of-range values with code 39 naming attribute and value', () => {
    const e = parseError({ hour: '25' });
    expect(e.code).toBe(ReturnCode.unsupportedConfigurationParameter);
    expect(e.code).toBe(39);
    expect(e.message).toBe('sstCronHour "25" is out of range 0-23');
    expect(parseError({ minute: '60' }).message).toBe('sstCronMinute "60" is out of range 0-59');
    expect(parseError({ day: '0' }).message).toBe('sstCronDay "0" is out of range 1-31');
    expect(parseError({ day: '32' }).message).toBe('sstCronDay "32" is out of range 1-31');
    expect(parseError({ month: '13' }).message).toBe('sstCronMonth "13" is out of range 1-12');
    expect(parseError({ month: '0' }).message).toBe('sstCronMonth "0" is out of range 1-12');
    expect(parseError({ dayOfWeek: '8' }).message).toBe('sstCronDayOfWeek "8" is out of range 0-7');
    expect(parseError({ hour: '1,2,24' }).message).toBe('sstCronHour "1,2,24" is out of range 0-23');
    expect(parseError({ minute: '0-60/5' }).message).toBe('sstCronMinute "0-60/5" is out of range 0-59');
  });

  it('rejects malformed fields with code 39', () => {
    const bad: Array<[keyof Parameters<typeof parseError>[0], string, string]> = [
      ['hour', '', 'sstCronHour'],
      ['hour', '   ', 'sstCronHour'],
      ['hour', 'x', 'sstCronHour'],
      ['hour', '1-', 'sstCronHour'],
      ['hour', '-1', 'sstCronHour'],
      ['hour', '1,,2', 'sstCronHour'],
      ['hour', '1,', 'sstCronHour'],
      ['hour', '*/0', 'sstCronHour'],
      ['hour', '*/x', 'sstCronHour'],
      ['hour', '*/', 'sstCronHour'],
      ['hour', '5-1', 'sstCronHour'],
      ['hour', '*-5', 'sstCronHour'],
      ['hour', '1/2/3', 'sstCronHour'],
      ['hour', '3 4', 'sstCronHour'],
      ['hour', '?', 'sstCronHour'],
      ['hour', '1.5', 'sstCronHour'],
      ['minute', 'jan', 'sstCronMinute'],
      ['day', 'L', 'sstCronDay'],
      ['month', 'foo', 'sstCronMonth'],
      ['dayOfWeek', 'monday', 'sstCronDayOfWeek'],
      ['dayOfWeek', 'fri-mon', 'sstCronDayOfWeek'],
    ];
    for (const [field, value, attribute] of bad) {
      const e = parseError({ [field]: value });
      expect(e.code, `${field}=${JSON.stringify(value)}`).toBe(39);
      expect(e.message.startsWith(`${attribute} ${JSON.stringify(value)} `), e.message).toBe(true);
    }
  });
});

describe('cronMatches', () => {
  const zurich = (iso: string) => DateTime.fromISO(iso, { zone: 'Europe/Zurich' });

  it('matches the wall-clock minute in the DateTime’s own zone', () => {
    const spec = cron('0 3 * * *');
    expect(cronMatches(spec, zurich('2026-07-01T03:00'))).toBe(true);
    expect(cronMatches(spec, zurich('2026-07-01T03:01'))).toBe(false);
    expect(cronMatches(spec, zurich('2026-07-01T04:00'))).toBe(false);
    // 01:00Z is 03:00 in Zurich in summer, but the match is on the wall clock of the given zone.
    expect(cronMatches(spec, utc('2026-07-01T01:00'))).toBe(false);
    expect(cronMatches(spec, utc('2026-07-01T01:00').setZone('Europe/Zurich'))).toBe(true);
  });

  it('checks month and day of week (Sunday as 0 and 7)', () => {
    // 2026-07-05 is a Sunday.
    expect(cronMatches(cron('0 3 * * 0'), zurich('2026-07-05T03:00'))).toBe(true);
    expect(cronMatches(cron('0 3 * * 7'), zurich('2026-07-05T03:00'))).toBe(true);
    expect(cronMatches(cron('0 3 * * sun'), zurich('2026-07-05T03:00'))).toBe(true);
    expect(cronMatches(cron('0 3 * * 1-6'), zurich('2026-07-05T03:00'))).toBe(false);
    expect(cronMatches(cron('0 3 * 7 *'), zurich('2026-07-05T03:00'))).toBe(true);
    expect(cronMatches(cron('0 3 * 8 *'), zurich('2026-07-05T03:00'))).toBe(false);
  });

  it('ORs day of month and day of week when both are restricted', () => {
    const spec = cron('0 12 13 * 5'); // the 13th, or any Friday
    expect(cronMatches(spec, utc('2026-04-13T12:00'))).toBe(true); // Monday the 13th
    expect(cronMatches(spec, utc('2026-04-10T12:00'))).toBe(true); // Friday the 10th
    expect(cronMatches(spec, utc('2026-04-14T12:00'))).toBe(false); // Tuesday the 14th
  });

  it('ANDs them when one of them starts with * (Vixie cron)', () => {
    const spec = cron('0 12 */2 * 5'); // odd days that are Fridays
    expect(cronMatches(spec, utc('2026-04-03T12:00'))).toBe(true); // Friday the 3rd
    expect(cronMatches(spec, utc('2026-04-10T12:00'))).toBe(false); // Friday the 10th
    expect(cronMatches(spec, utc('2026-04-05T12:00'))).toBe(false); // Sunday the 5th
  });
});

describe('plannedRunsBetween', () => {
  it('plans 03:00 Europe/Zurich at 01:00Z in summer (the seed example)', () => {
    expect(runs('0 3 * * *', '2012-10-01T12:00:00Z', '2012-10-02T12:00:00Z', 'Europe/Zurich')).toEqual(['2012-10-02T01:00:00Z']);
    const planned = plannedRunsBetween(cron('0 3 * * *'), utc('2012-10-01T12:00'), utc('2012-10-02T12:00'), 'Europe/Zurich');
    expect(planned.map(plannedRunLeafName)).toEqual(['20121002T010000Z']);
    expect(runs('0 3 * * *', '2026-07-01T00:00:00Z', '2026-07-03T00:00:00Z', 'Europe/Zurich')).toEqual([
      '2026-07-01T01:00:00Z',
      '2026-07-02T01:00:00Z',
    ]);
  });

  it('plans 03:00 Europe/Zurich at 02:00Z in winter', () => {
    expect(runs('0 3 * * *', '2026-01-14T12:00:00Z', '2026-01-16T12:00:00Z', 'Europe/Zurich')).toEqual([
      '2026-01-15T02:00:00Z',
      '2026-01-16T02:00:00Z',
    ]);
    const [run] = plannedRunsBetween(cron('0 3 * * *'), utc('2026-01-15T00:00'), utc('2026-01-15T12:00'), 'Europe/Zurich');
    expect(run && plannedRunLeafName(run)).toBe('20260115T020000Z');
  });

  it('returns UTC DateTimes with zero seconds', () => {
    const [run] = plannedRunsBetween(cron('0 3 * * *'), utc('2026-07-01T00:00:17.5'), utc('2026-07-01T12:00:00'), 'Europe/Zurich');
    expect(run?.zoneName).toBe('UTC');
    expect(run?.second).toBe(0);
    expect(run?.millisecond).toBe(0);
    expect(run?.toMillis()).toBe(Date.UTC(2026, 6, 1, 1, 0, 0));
  });

  it('excludes the start and includes the end of the window', () => {
    expect(runs('*/15 * * * *', '2026-07-01T10:00:00Z', '2026-07-01T11:00:00Z', 'Europe/Zurich')).toEqual([
      '2026-07-01T10:15:00Z',
      '2026-07-01T10:30:00Z',
      '2026-07-01T10:45:00Z',
      '2026-07-01T11:00:00Z',
    ]);
    expect(runs('0 3 * * *', '2026-07-01T01:00:00Z', '2026-07-01T01:00:00Z', 'Europe/Zurich')).toEqual([]);
    expect(runs('0 3 * * *', '2026-07-01T01:00:00Z', '2026-07-01T00:00:00Z', 'Europe/Zurich')).toEqual([]);
    expect(runs('0 3 * * *', '2026-07-01T00:59:59Z', '2026-07-01T01:00:00Z', 'Europe/Zurich')).toEqual(['2026-07-01T01:00:00Z']);
    expect(runs('0 3 * * *', '2026-07-01T01:00:00Z', '2026-07-01T01:00:59Z', 'Europe/Zurich')).toEqual([]);
  });

  it('runs a time skipped by spring forward once, right after the gap (02:30 on 2026-03-29 Europe/Zurich)', () => {
    expect(runs('30 2 * * *', '2026-03-27T12:00:00Z', '2026-03-30T12:00:00Z', 'Europe/Zurich')).toEqual([
      '2026-03-28T01:30:00Z', // 02:30 CET
      '2026-03-29T01:00:00Z', // 02:30 does not exist: 03:00 CEST
      '2026-03-30T00:30:00Z', // 02:30 CEST
    ]);
    const gapRun = plannedRunsBetween(cron('30 2 * * *'), utc('2026-03-29T00:00'), utc('2026-03-29T12:00'), 'Europe/Zurich');
    expect(gapRun.map(plannedRunLeafName)).toEqual(['20260329T010000Z']);
  });

  it('collapses every skipped minute of the gap into one run', () => {
    expect(runs('*/15 2 * * *', '2026-03-28T23:00:00Z', '2026-03-29T03:00:00Z', 'Europe/Zurich')).toEqual(['2026-03-29T01:00:00Z']);
    expect(runs('* * * * *', '2026-03-29T00:57:00Z', '2026-03-29T01:02:00Z', 'Europe/Zurich')).toEqual([
      '2026-03-29T00:58:00Z', // 01:58 CET
      '2026-03-29T00:59:00Z', // 01:59 CET
      '2026-03-29T01:00:00Z', // 03:00 CEST (and everything from 02:00 to 02:59)
      '2026-03-29T01:01:00Z',
      '2026-03-29T01:02:00Z',
    ]);
    // 03:00 itself and the skipped 02:xx are one run, not two.
    expect(runs('0,30 2,3 * * *', '2026-03-28T23:00:00Z', '2026-03-29T03:00:00Z', 'Europe/Zurich')).toEqual([
      '2026-03-29T01:00:00Z',
      '2026-03-29T01:30:00Z',
    ]);
  });

  it('runs a time repeated by fall back once, at its first occurrence (02:30 on 2026-10-25 Europe/Zurich)', () => {
    expect(runs('30 2 * * *', '2026-10-23T12:00:00Z', '2026-10-26T12:00:00Z', 'Europe/Zurich')).toEqual([
      '2026-10-24T00:30:00Z', // 02:30 CEST
      '2026-10-25T00:30:00Z', // 02:30 CEST, first of two; not 01:30Z (02:30 CET)
      '2026-10-26T01:30:00Z', // 02:30 CET
    ]);
    // A window that only holds the second occurrence plans nothing.
    expect(runs('30 2 * * *', '2026-10-25T01:00:00Z', '2026-10-25T02:00:00Z', 'Europe/Zurich')).toEqual([]);
    expect(runs('*/15 2 * * *', '2026-10-24T23:00:00Z', '2026-10-25T03:00:00Z', 'Europe/Zurich')).toEqual([
      '2026-10-25T00:00:00Z',
      '2026-10-25T00:15:00Z',
      '2026-10-25T00:30:00Z',
      '2026-10-25T00:45:00Z',
    ]);
    expect(runs('0 * * * *', '2026-10-24T22:00:00Z', '2026-10-25T03:00:00Z', 'Europe/Zurich')).toEqual([
      '2026-10-24T23:00:00Z', // 01:00 CEST
      '2026-10-25T00:00:00Z', // 02:00 CEST
      '2026-10-25T02:00:00Z', // 03:00 CET (02:00 CET at 01:00Z is a repeat)
      '2026-10-25T03:00:00Z', // 04:00 CET
    ]);
    // 03:00 on the fall-back day exists once, after the repeated hour.
    expect(runs('0 3 * * *', '2026-10-24T12:00:00Z', '2026-10-25T12:00:00Z', 'Europe/Zurich')).toEqual(['2026-10-25T02:00:00Z']);
  });

  it('plans every 15 minutes across a day, 96 runs', () => {
    const all = runs('*/15 * * * *', '2026-07-01T00:00:00Z', '2026-07-02T00:00:00Z', 'Europe/Zurich');
    expect(all).toHaveLength(96);
    expect(all[0]).toBe('2026-07-01T00:15:00Z');
    expect(all[95]).toBe('2026-07-02T00:00:00Z');
    // The spring-forward day has 23 hours → 92 runs; the fall-back day has 25 hours, the repeated hour plans nothing → 96.
    expect(runs('*/15 * * * *', '2026-03-28T23:00:00Z', '2026-03-29T22:00:00Z', 'Europe/Zurich')).toHaveLength(92);
    expect(runs('*/15 * * * *', '2026-10-24T22:00:00Z', '2026-10-25T23:00:00Z', 'Europe/Zurich')).toHaveLength(96);
  });

  it('ORs day of month and day of week when both are restricted', () => {
    // April 2026: Fridays are 3, 10, 17, 24; the 13th is a Monday.
    const days = (text: string) =>
      runs(text, '2026-04-01T00:00:00Z', '2026-05-01T00:00:00Z', 'UTC').map((s) => Number(s.slice(8, 10)));
    expect(days('0 12 13 * 5')).toEqual([3, 10, 13, 17, 24]);
    expect(days('0 12 13 * *')).toEqual([13]);
    expect(days('0 12 * * 5')).toEqual([3, 10, 17, 24]);
    expect(days('0 12 */2 * 5')).toEqual([3, 17]);
    expect(days('0 12 1,15 * mon')).toEqual([1, 6, 13, 15, 20, 27]);
  });

  it('handles America/New_York (EST/EDT)', () => {
    const ny = 'America/New_York';
    expect(runs('0 3 * * *', '2026-07-01T00:00:00Z', '2026-07-02T00:00:00Z', ny)).toEqual(['2026-07-01T07:00:00Z']);
    expect(runs('0 3 * * *', '2026-01-15T00:00:00Z', '2026-01-16T00:00:00Z', ny)).toEqual(['2026-01-15T08:00:00Z']);
    // Spring forward 2026-03-08 02:00 EST → 03:00 EDT.
    expect(runs('30 2 * * *', '2026-03-07T00:00:00Z', '2026-03-10T00:00:00Z', ny)).toEqual([
      '2026-03-07T07:30:00Z',
      '2026-03-08T07:00:00Z',
      '2026-03-09T06:30:00Z',
    ]);
    // Fall back 2026-11-01 02:00 EDT → 01:00 EST: 01:30 happens twice, runs once.
    expect(runs('30 1 * * *', '2026-10-31T00:00:00Z', '2026-11-03T00:00:00Z', ny)).toEqual([
      '2026-10-31T05:30:00Z',
      '2026-11-01T05:30:00Z',
      '2026-11-02T06:30:00Z',
    ]);
  });

  it('handles a 30-minute DST shift (Australia/Lord_Howe)', () => {
    // 2026-10-04 02:00 +10:30 → 02:30 +11:00; 2026-04-05 02:00 +11:00 → 01:30 +10:30.
    expect(runs('15 2 * * *', '2026-10-03T00:00:00Z', '2026-10-05T00:00:00Z', 'Australia/Lord_Howe')).toEqual([
      '2026-10-03T15:30:00Z', // 02:15 on the 4th does not exist: runs at 02:30 +11:00
      '2026-10-04T15:15:00Z', // 02:15 +11:00 on the 5th
    ]);
    expect(runs('45 1 * * *', '2026-04-03T00:00:00Z', '2026-04-06T00:00:00Z', 'Australia/Lord_Howe')).toEqual([
      '2026-04-03T14:45:00Z', // 01:45 +11:00 on the 4th
      '2026-04-04T14:45:00Z', // 01:45 +11:00 on the 5th, first of two
      '2026-04-05T15:15:00Z', // 01:45 +10:30 on the 6th
    ]);
  });

  it('works in UTC and fixed zones', () => {
    expect(runs('0 3 * * *', '2026-03-29T00:00:00Z', '2026-03-30T00:00:00Z', 'UTC')).toEqual(['2026-03-29T03:00:00Z']);
    expect(runs('0 3 * * *', '2026-03-29T00:00:00Z', '2026-03-30T00:00:00Z', 'UTC+2')).toEqual(['2026-03-29T01:00:00Z']);
  });

  it('crosses year boundaries', () => {
    expect(runs('0 0 1 1 *', '2026-12-31T00:00:00Z', '2027-01-02T00:00:00Z', 'Europe/Zurich')).toEqual(['2026-12-31T23:00:00Z']);
  });

  it('rejects an unknown time zone with code 39', () => {
    expect(() => runs('0 3 * * *', '2026-07-01T00:00:00Z', '2026-07-02T00:00:00Z', 'Mars/Olympus_Mons')).toThrow(BackupError);
    try {
      runs('0 3 * * *', '2026-07-01T00:00:00Z', '2026-07-02T00:00:00Z', 'Mars/Olympus_Mons');
    } catch (err) {
      expect((err as BackupError).code).toBe(39);
    }
  });

  it('agrees with a minute-by-minute reference around DST changes', () => {
    // Reference: walk every UTC minute; a run happens at t when any wall-clock
    // minute after the latest one already seen, up to t's own, matches.
    function reference(spec: CronSpec, from: DateTime, to: DateTime, zone: string): string[] {
      const out: string[] = [];
      let maxSeen = -Infinity;
      for (let t = from.minus({ days: 1 }); t <= to; t = t.plus({ minutes: 1 })) {
        const local = t.setZone(zone);
        const wall = DateTime.fromObject(
          { year: local.year, month: local.month, day: local.day, hour: local.hour, minute: local.minute },
          { zone: 'utc' },
        );
        let matched = false;
        if (wall.toMillis() > maxSeen) {
          const start = maxSeen === -Infinity ? wall : DateTime.fromMillis(maxSeen, { zone: 'utc' }).plus({ minutes: 1 });
          for (let w = start; w <= wall; w = w.plus({ minutes: 1 })) matched ||= cronMatches(spec, w);
          maxSeen = wall.toMillis();
        }
        if (matched && t > from) out.push(t.toUTC().toISO()!);
      }
      return out;
    }
    const cases: Array<[string, string, string, string]> = [
      ['Europe/Zurich', '2026-03-28T20:00:00Z', '2026-03-29T06:00:00Z', '*/20 1-3 * * *'],
      ['Europe/Zurich', '2026-10-24T20:00:00Z', '2026-10-25T06:00:00Z', '*/20 1-3 * * *'],
      ['Europe/Zurich', '2026-10-24T20:00:00Z', '2026-10-25T06:00:00Z', '7 * * * *'],
      ['America/New_York', '2026-03-08T03:00:00Z', '2026-03-08T12:00:00Z', '0,30 * * * *'],
      ['America/New_York', '2026-11-01T03:00:00Z', '2026-11-01T12:00:00Z', '0,30 * * * *'],
      ['Australia/Lord_Howe', '2026-10-03T12:00:00Z', '2026-10-03T18:00:00Z', '*/10 * * * *'],
      ['Australia/Lord_Howe', '2026-04-04T12:00:00Z', '2026-04-04T18:00:00Z', '*/10 * * * *'],
    ];
    for (const [zone, from, to, text] of cases) {
      const spec = cron(text);
      const expected = reference(spec, utc(from), utc(to), zone);
      const actual = plannedRunsBetween(spec, utc(from), utc(to), zone).map((d) => d.toISO());
      expect(actual, `${zone} ${text}`).toEqual(expected);
      expect(actual.length).toBeGreaterThan(0);
    }
  });

  it('is cheap for per-minute ticks over thousands of VMs', () => {
    const specs = [cron('0 3 * * *'), cron('*/15 * * * *'), cron('30 2 * * 1-5'), cron('0 22 1 * *')];
    const zone = 'Europe/Zurich';
    plannedRunsBetween(specs[0]!, utc('2026-03-29T00:00'), utc('2026-03-29T00:01'), zone); // warm the offset cache
    const start = performance.now();
    let count = 0;
    let t = utc('2026-03-28T20:00');
    for (let i = 0; i < 20_000; i++) {
      const next = t.plus({ minutes: 1 });
      count += plannedRunsBetween(specs[i % specs.length]!, t, next, zone).length;
      if (i % 4 === 3) t = next;
    }
    const elapsed = performance.now() - start;
    expect(count).toBeGreaterThan(0);
    expect(elapsed).toBeLessThan(3000);
  });
});

describe('nextPlannedRun', () => {
  it('finds the next run strictly after the given instant', () => {
    const spec = cron('0 3 * * *');
    expect(nextPlannedRun(spec, utc('2026-07-01T00:00'), 'Europe/Zurich')?.toISO()).toBe('2026-07-01T01:00:00.000Z');
    expect(nextPlannedRun(spec, utc('2026-07-01T01:00'), 'Europe/Zurich')?.toISO()).toBe('2026-07-02T01:00:00.000Z');
    expect(nextPlannedRun(spec, utc('2026-03-28T02:00'), 'Europe/Zurich')?.toISO()).toBe('2026-03-29T01:00:00.000Z');
    expect(nextPlannedRun(cron('30 2 * * *'), utc('2026-03-28T02:00'), 'Europe/Zurich')?.toISO()).toBe('2026-03-29T01:00:00.000Z');
  });

  it('looks far ahead for rare schedules', () => {
    expect(nextPlannedRun(cron('0 0 1 1 *'), utc('2026-01-01T00:00'), 'UTC')?.toISO()).toBe('2027-01-01T00:00:00.000Z');
    expect(nextPlannedRun(cron('0 0 29 2 *'), utc('2026-03-01T00:00'), 'UTC')?.toISO()).toBe('2028-02-29T00:00:00.000Z');
    expect(nextPlannedRun(cron('0 0 29 2 *'), utc('2026-03-01T00:00'), 'Europe/Zurich')?.toISO()).toBe('2028-02-28T23:00:00.000Z');
  });

  it('returns undefined for a schedule that never runs', () => {
    expect(nextPlannedRun(cron('0 3 30 2 *'), utc('2026-01-01T00:00'), 'Europe/Zurich')).toBeUndefined();
    expect(nextPlannedRun(cron('0 3 31 4,6,9,11 *'), utc('2026-01-01T00:00'), 'UTC')).toBeUndefined();
  });

  it('still ORs the day fields: "30 or Monday" in February runs on February Mondays', () => {
    // 2026-02-02 is the first Monday of February.
    expect(nextPlannedRun(cron('0 3 30 2 1'), utc('2026-01-01T00:00'), 'UTC')?.toISO()).toBe('2026-02-02T03:00:00.000Z');
  });
});
