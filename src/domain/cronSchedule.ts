import { DateTime, Info, type Zone } from 'luxon';
import { BackupError } from './errors.js';
import { formatLeafName } from './leafName.js';
import { ReturnCode } from './returnCodes.js';
import type { CronSettings } from './settings.js';

/**
 * A VM's backup schedule: the five crontab fields of sstCronObjectClass, in the
 * host's local time. The control side needs the *planned* instants (the leaf is
 * named after the planned time in UTC), so we match and enumerate ourselves
 * instead of registering callbacks with a cron library.
 *
 * DST rules (the same as Vixie cron / cronie for fixed-time jobs):
 * - A wall-clock time that does not exist (spring forward: 02:30 Europe/Zurich
 *   on the last Sunday of March) runs once, at the first instant after the gap
 *   (03:00 local = 01:00Z). Several matching minutes inside one gap (e.g.
 *   minute `0-59/15` with hour 2) collapse into that single run.
 * - A wall-clock time that occurs twice (fall back: 02:30 on the last Sunday of
 *   October) runs once, at its first occurrence (02:30 CEST = 00:30Z).
 * Both follow from one definition: wall-clock minute w is planned at the first
 * instant t whose local time is ≥ w.
 *
 * Day of month and day of week (Vixie cron): if either field starts with `*`
 * it does not restrict, and a day must match both; if both are restricted, a
 * day matches when either one does.
 */
export interface CronSpec {
  readonly minutes: ReadonlySet<number>;
  readonly hours: ReadonlySet<number>;
  /** Day of month, 1–31. */
  readonly days: ReadonlySet<number>;
  /** 1–12. */
  readonly months: ReadonlySet<number>;
  /** 0 = Sunday … 6 = Saturday (7 in the input is folded onto 0). */
  readonly daysOfWeek: ReadonlySet<number>;
  /** False when sstCronDay starts with `*`. */
  readonly dayRestricted: boolean;
  /** False when sstCronDayOfWeek starts with `*`. */
  readonly dayOfWeekRestricted: boolean;
  /** The five fields as given, in crontab order, for logs and messages. */
  readonly text: string;
}

export type CronFields = Pick<CronSettings, 'minute' | 'hour' | 'day' | 'month' | 'dayOfWeek'>;

interface FieldRule {
  attribute: string;
  min: number;
  max: number;
  names?: readonly string[];
  /** Index 0 of names stands for this number. */
  namesStartAt?: number;
}

const monthNames = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'] as const;
const dayNames = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;

const rules = {
  minute: { attribute: 'sstCronMinute', min: 0, max: 59 },
  hour: { attribute: 'sstCronHour', min: 0, max: 23 },
  day: { attribute: 'sstCronDay', min: 1, max: 31 },
  month: { attribute: 'sstCronMonth', min: 1, max: 12, names: monthNames, namesStartAt: 1 },
  dayOfWeek: { attribute: 'sstCronDayOfWeek', min: 0, max: 7, names: dayNames, namesStartAt: 0 },
} satisfies Record<keyof CronFields, FieldRule>;

function unsupported(rule: FieldRule, value: string, problem: string): BackupError {
  return new BackupError(`${rule.attribute} ${JSON.stringify(value)} ${problem}`, ReturnCode.unsupportedConfigurationParameter);
}

function parseValue(rule: FieldRule, field: string, token: string): number {
  if (/^\d+$/.test(token)) {
    const n = Number(token);
    if (n < rule.min || n > rule.max) throw unsupported(rule, field, `is out of range ${rule.min}-${rule.max}`);
    return n;
  }
  const i = rule.names?.indexOf(token.toLowerCase()) ?? -1;
  if (i >= 0) return i + (rule.namesStartAt ?? 0);
  throw unsupported(rule, field, `is not a valid cron field (${JSON.stringify(token)} is not a number${rule.names ? ' or a name' : ''})`);
}

/** One crontab field → the set of values it allows. */
function parseField(rule: FieldRule, raw: string): Set<number> {
  const field = raw.trim();
  const values = new Set<number>();
  if (field === '') throw unsupported(rule, raw, 'is empty');
  for (const item of field.split(',')) {
    const m = /^([^/-]+)(?:-([^/-]+))?(?:\/([^/-]+))?$/.exec(item);
    if (!m) throw unsupported(rule, field, 'is not a valid cron field (expected *, n, a-b, a list a,b or a step */n, a-b/n)');
    const [, startText = '', endText, stepText] = m;
    let start: number;
    let end: number;
    if (startText === '*') {
      if (endText !== undefined) throw unsupported(rule, field, 'is not a valid cron field (* cannot start a range)');
      start = rule.min;
      end = rule.max;
    } else {
      start = parseValue(rule, field, startText);
      // `a/n` means a up to the maximum in steps of n (as in cronie).
      end = endText !== undefined ? parseValue(rule, field, endText) : stepText !== undefined ? rule.max : start;
      if (start > end) throw unsupported(rule, field, `has a range ${start}-${end} whose start is after its end`);
    }
    let step = 1;
    if (stepText !== undefined) {
      if (!/^\d+$/.test(stepText) || Number(stepText) < 1) throw unsupported(rule, field, `has an invalid step ${JSON.stringify(stepText)}`);
      step = Number(stepText);
    }
    for (let v = start; v <= end; v += step) values.add(v);
  }
  return values;
}

/** Parses the five cron fields; throws BackupError (code 39) naming the bad attribute and value. */
export function parseCron(c: CronFields): CronSpec {
  const daysOfWeek = parseField(rules.dayOfWeek, c.dayOfWeek);
  if (daysOfWeek.delete(7)) daysOfWeek.add(0);
  return {
    minutes: parseField(rules.minute, c.minute),
    hours: parseField(rules.hour, c.hour),
    days: parseField(rules.day, c.day),
    months: parseField(rules.month, c.month),
    daysOfWeek,
    dayRestricted: !c.day.trim().startsWith('*'),
    dayOfWeekRestricted: !c.dayOfWeek.trim().startsWith('*'),
    text: [c.minute, c.hour, c.day, c.month, c.dayOfWeek].map((f) => f.trim()).join(' '),
  };
}

function dayMatches(spec: CronSpec, dayOfMonth: number, dayOfWeek: number): boolean {
  const dom = spec.days.has(dayOfMonth);
  const dow = spec.daysOfWeek.has(dayOfWeek);
  return spec.dayRestricted && spec.dayOfWeekRestricted ? dom || dow : dom && dow;
}

/** Whether a wall-clock minute (the DateTime's own zone) matches the schedule. */
export function cronMatches(spec: CronSpec, local: DateTime): boolean {
  return (
    spec.minutes.has(local.minute) &&
    spec.hours.has(local.hour) &&
    spec.months.has(local.month) &&
    dayMatches(spec, local.day, local.weekday % 7)
  );
}

// ---------------------------------------------------------------------------
// Zone offsets as plain numbers, so enumerating runs is arithmetic.

const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;
/** Offsets are sampled this often; zones whose offset changes and changes back within it are not supported (none in tzdata). */
const SAMPLE_MS = 3 * HOUR_MS;
/** Enumeration works in chunks of this many days, so offsets are looked at only where needed. */
const CHUNK_MS = 7 * DAY_MS;
/** nextPlannedRun looks this far ahead: 8 years, so Feb 29 is found even across 2100. */
const HORIZON_MS = (8 * 366 + 2) * DAY_MS;
/** No zone is more than 14 hours away from UTC. */
const MAX_OFFSET_MS = 15 * HOUR_MS;

interface Transition {
  /** Epoch ms from which `offset` applies. */
  at: number;
  /** Offset in ms. */
  offset: number;
}
interface Segment {
  start: number;
  end: number;
  offset: number;
}

const yearCache = new Map<string, Map<number, Transition[]>>();

/** The zone's offset at the start of a UTC year and every change within it. */
function yearTransitions(zone: Zone, year: number): Transition[] {
  let perZone = yearCache.get(zone.name);
  if (!perZone) {
    perZone = new Map();
    yearCache.set(zone.name, perZone);
  }
  const cached = perZone.get(year);
  if (cached) return cached;
  const offsetAt = (ms: number) => zone.offset(ms) * MINUTE_MS;
  const start = Date.UTC(year, 0, 1);
  const end = Date.UTC(year + 1, 0, 1);
  const result: Transition[] = [{ at: start, offset: offsetAt(start) }];
  if (!zone.isUniversal) {
    let prevAt = start;
    let prevOffset = offsetAt(start);
    for (let sample = Math.min(start + SAMPLE_MS, end); prevAt < end; sample = Math.min(sample + SAMPLE_MS, end)) {
      // Find every change in (prevAt, sample] to the second.
      while (offsetAt(sample) !== prevOffset) {
        let lo = prevAt;
        let hi = sample;
        while (hi - lo > 1000) {
          const mid = lo + Math.floor((hi - lo) / 2000) * 1000;
          if (offsetAt(mid) === prevOffset) lo = mid;
          else hi = mid;
        }
        prevAt = hi;
        prevOffset = offsetAt(hi);
        if (hi < end) result.push({ at: hi, offset: prevOffset });
      }
      prevAt = sample;
    }
  }
  perZone.set(year, result);
  return result;
}

/** Constant-offset stretches covering [from, to). */
function offsetSegments(zone: Zone, from: number, to: number): Segment[] {
  const points: Transition[] = [];
  const lastYear = new Date(to).getUTCFullYear();
  for (let y = new Date(from).getUTCFullYear(); y <= lastYear; y++) points.push(...yearTransitions(zone, y));
  const segments: Segment[] = [];
  for (let i = 0; i < points.length; i++) {
    const p = points[i]!;
    const start = Math.max(p.at, from);
    const end = Math.min(points[i + 1]?.at ?? Infinity, to);
    if (start >= end) continue;
    const last = segments[segments.length - 1];
    if (last && last.offset === p.offset) last.end = end;
    else segments.push({ start, end, offset: p.offset });
  }
  return segments;
}

/**
 * The instant a wall-clock minute is planned at: the first instant whose local
 * time is ≥ wall. Normal times: the one instant; repeated times: the first
 * occurrence; skipped times: the end of the gap. `segments` must reach at
 * least a day beyond the instants concerned on both sides.
 */
function plannedInstant(wall: number, segments: readonly Segment[]): number {
  let best = Infinity;
  for (const s of segments) {
    const t = wall - s.offset;
    if (t >= s.start && t < s.end) best = Math.min(best, t);
    else if (t < s.start) best = Math.min(best, s.start);
  }
  return best;
}

/** Wall-clock minutes (local time as if it were UTC, in ms) in [lo, hi] that match, ascending. */
function* matchingWallMinutes(spec: CronSpec, lo: number, hi: number): Generator<number> {
  let w = Math.ceil(lo / MINUTE_MS) * MINUTE_MS;
  while (w <= hi) {
    const d = new Date(w);
    const y = d.getUTCFullYear();
    const mo = d.getUTCMonth();
    const day = d.getUTCDate();
    const h = d.getUTCHours();
    if (!spec.months.has(mo + 1)) w = Date.UTC(y, mo + 1, 1);
    else if (!dayMatches(spec, day, d.getUTCDay())) w = Date.UTC(y, mo, day + 1);
    else if (!spec.hours.has(h)) w = Date.UTC(y, mo, day, h + 1);
    else {
      if (spec.minutes.has(d.getUTCMinutes())) yield w;
      w += MINUTE_MS;
    }
  }
}

function resolveZone(zone: string): Zone {
  const z = Info.normalizeZone(zone);
  if (!z.isValid) {
    throw new BackupError(`time zone ${JSON.stringify(zone)} is not a valid IANA time zone`, ReturnCode.unsupportedConfigurationParameter);
  }
  return z;
}

function millis(what: string, t: DateTime): number {
  if (!t.isValid) throw new RangeError(`${what} is an invalid DateTime: ${t.invalidExplanation ?? t.invalidReason ?? ''}`);
  return t.toMillis();
}

/** Planned instants (epoch ms) in (from, to], ascending. */
function* plannedInstants(spec: CronSpec, from: number, to: number, zone: Zone): Generator<number> {
  for (let chunkFrom = from; chunkFrom < to; chunkFrom += CHUNK_MS) {
    const chunkTo = Math.min(chunkFrom + CHUNK_MS, to);
    // Cheap test first: anything matching near this chunk at all? Only then look at offsets.
    if (matchingWallMinutes(spec, chunkFrom - MAX_OFFSET_MS, chunkTo + MAX_OFFSET_MS).next().done) continue;
    const segments = offsetSegments(zone, chunkFrom - DAY_MS, chunkTo + DAY_MS);
    const offsets = segments.map((s) => s.offset);
    const lo = chunkFrom + Math.min(...offsets);
    const hi = chunkTo + Math.max(...offsets);
    let last = -Infinity;
    for (const wall of matchingWallMinutes(spec, lo, hi)) {
      const t = plannedInstant(wall, segments);
      if (t > chunkFrom && t <= chunkTo && t !== last) {
        last = t;
        yield t;
      }
    }
  }
}

/**
 * The planned runs in (fromExclusive, toInclusive] as UTC DateTimes (seconds 0)
 * for a schedule read in `zone` (IANA name, e.g. Europe/Zurich). DST: see the
 * comment on CronSpec. Cheap for the short windows a per-minute tick asks for.
 */
export function plannedRunsBetween(spec: CronSpec, fromExclusive: DateTime, toInclusive: DateTime, zone: string): DateTime[] {
  const z = resolveZone(zone);
  const runs: DateTime[] = [];
  for (const t of plannedInstants(spec, millis('fromExclusive', fromExclusive), millis('toInclusive', toInclusive), z)) {
    runs.push(DateTime.fromMillis(t, { zone: 'utc' }));
  }
  return runs;
}

/** The first planned run strictly after `after`, or undefined if none within 8 years (e.g. 30 February). */
export function nextPlannedRun(spec: CronSpec, after: DateTime, zone: string): DateTime | undefined {
  const z = resolveZone(zone);
  const from = millis('after', after);
  const first = plannedInstants(spec, from, from + HORIZON_MS, z).next();
  return first.done ? undefined : DateTime.fromMillis(first.value, { zone: 'utc' });
}

/** The leaf (ou=<name>) for a planned run: its instant in UTC as YYYYMMDDTHHMMSSZ. */
export function plannedRunLeafName(run: DateTime): string {
  return formatLeafName(run);
}
