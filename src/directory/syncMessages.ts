import { Ber, BerReader } from 'ldapts';
import { LdapFramingError } from './ldapMessageFraming.js';

/**
 * Decoders for what a syncrepl provider sends back (RFC 4533 §2.3–2.5).
 * Cookies are opaque bytes; UUIDs are returned in the usual 8-4-4-4-12 form.
 */

export type SyncEntryState = 'present' | 'add' | 'modify' | 'delete';

/** Sync State control, attached to every SearchResultEntry of a sync search. */
export interface SyncStateValue {
  state: SyncEntryState;
  uuid: string;
  cookie: Buffer | undefined;
}

/** Sync Done control, attached to SearchResultDone. */
export interface SyncDoneValue {
  cookie: Buffer | undefined;
  /** true: the refresh ended with a delete phase (deletes were sent); false: a present phase (drop what was not listed) */
  refreshDeletes: boolean;
}

/** Sync Info message, the value of an IntermediateResponse. */
export type SyncInfoValue =
  | { kind: 'newCookie'; cookie: Buffer }
  | { kind: 'refreshDelete'; cookie: Buffer | undefined; refreshDone: boolean }
  | { kind: 'refreshPresent'; cookie: Buffer | undefined; refreshDone: boolean }
  | { kind: 'syncIdSet'; cookie: Buffer | undefined; refreshDeletes: boolean; uuids: string[] };

const states: SyncEntryState[] = ['present', 'add', 'modify', 'delete'];

/** 16 bytes → 8-4-4-4-12 lower-case hex. */
export function formatUuid(bytes: Buffer): string {
  if (bytes.length !== 16) throw new LdapFramingError(`syncUUID of ${bytes.length} bytes (expected 16)`);
  const h = bytes.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function readCookie(r: BerReader, end: number): Buffer | undefined {
  if (r.offset < end && r.peek() === Ber.OctetString) return r.readString(Ber.OctetString, true) ?? undefined;
  return undefined;
}

function readOptionalBoolean(r: BerReader, end: number, fallback: boolean): boolean {
  if (r.offset < end && r.peek() === Ber.Boolean) return r.readBoolean() ?? fallback;
  return fallback;
}

export function decodeSyncState(value: Buffer): SyncStateValue {
  const r = new BerReader(value);
  r.readSequence(0x30);
  const end = r.offset + r.length;
  const state = states[r.readEnumeration() ?? -1];
  if (state === undefined) throw new LdapFramingError('Sync State control with an unknown state');
  const uuid = formatUuid(r.readString(Ber.OctetString, true) ?? Buffer.alloc(0));
  return { state, uuid, cookie: readCookie(r, end) };
}

export function decodeSyncDone(value: Buffer | undefined): SyncDoneValue {
  if (!value || value.length === 0) return { cookie: undefined, refreshDeletes: false };
  const r = new BerReader(value);
  r.readSequence(0x30);
  const end = r.offset + r.length;
  const cookie = readCookie(r, end);
  return { cookie, refreshDeletes: readOptionalBoolean(r, end, false) };
}

export function decodeSyncInfo(value: Buffer): SyncInfoValue {
  const r = new BerReader(value);
  const tag = r.peek();
  switch (tag) {
    case 0x80: // newcookie [0] syncCookie
      return { kind: 'newCookie', cookie: r.readString(0x80, true) ?? Buffer.alloc(0) };
    case 0xa1: // refreshDelete [1] SEQUENCE
    case 0xa2: {
      // refreshPresent [2] SEQUENCE
      r.readSequence(tag);
      const end = r.offset + r.length;
      const cookie = readCookie(r, end);
      const refreshDone = readOptionalBoolean(r, end, true);
      return { kind: tag === 0xa1 ? 'refreshDelete' : 'refreshPresent', cookie, refreshDone };
    }
    case 0xa3: {
      // syncIdSet [3] SEQUENCE { cookie, refreshDeletes, syncUUIDs SET OF }
      r.readSequence(0xa3);
      const end = r.offset + r.length;
      const cookie = readCookie(r, end);
      const refreshDeletes = readOptionalBoolean(r, end, false);
      const uuids: string[] = [];
      if (r.offset < end && r.readSequence(0x31) !== null) {
        const setEnd = r.offset + r.length;
        while (r.offset < setEnd) uuids.push(formatUuid(r.readString(Ber.OctetString, true) ?? Buffer.alloc(0)));
      }
      return { kind: 'syncIdSet', cookie, refreshDeletes, uuids };
    }
    default:
      throw new LdapFramingError(`Sync Info message with unknown tag 0x${(tag ?? 0).toString(16)}`);
  }
}
