import { DateTime } from 'luxon';

/** A backup leaf's RDN value and every protocol timestamp: UTC `YYYYMMDDTHHMMSSZ`. */
const pattern = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/;
const format = "yyyyMMdd'T'HHmmss'Z'";

export function formatLeafName(t: DateTime | Date): string {
  const dt = t instanceof Date ? DateTime.fromJSDate(t) : t;
  return dt.toUTC().toFormat(format);
}

export function isLeafName(s: string): boolean {
  return pattern.test(s) && parseLeafName(s) !== undefined;
}

/** The instant a leaf name stands for, or undefined when it is not one. */
export function parseLeafName(s: string): DateTime | undefined {
  if (!pattern.test(s)) return undefined;
  const dt = DateTime.fromFormat(s, format, { zone: 'utc' });
  // luxon accepts hour 24 (→ next day): only names that format back to themselves are leaf names.
  return dt.isValid && dt.toFormat(format) === s ? dt : undefined;
}

/** sstProvisioningState when a step ends: now, in the leaf format. */
export function protocolTimestamp(now: Date = new Date()): string {
  return formatLeafName(now);
}
