import { describe, expect, it } from 'vitest';
import { BerReader, BerWriter } from 'ldapts';
import { LdapFramingError, LdapMessageFramer, LdapOp } from '../../src/directory/ldapMessageFraming.js';
import { decodeSyncDone, decodeSyncInfo, decodeSyncState } from '../../src/directory/syncMessages.js';
import { SyncOid, SyncRequestControl } from '../../src/directory/syncRequestControl.js';
import { parseSyncCookie } from '../../src/directory/syncCookie.js';

const uuid = Buffer.from('0123456789abcdef0123456789abcdef', 'hex');
const uuidText = '01234567-89ab-cdef-0123-456789abcdef';

/** An IntermediateResponse carrying a Sync Info value, as slapd frames it. */
function intermediate(messageId: number, value: Buffer): Buffer {
  const w = new BerWriter();
  w.startSequence();
  w.writeInt(messageId);
  w.startSequence(LdapOp.intermediateResponse);
  w.writeString(SyncOid.info, 0x80);
  w.writeBuffer(value, 0x81);
  w.endSequence();
  w.endSequence();
  return w.buffer;
}

function syncIdSet(uuids: Buffer[], refreshDeletes: boolean, cookie?: string): Buffer {
  const w = new BerWriter();
  w.startSequence(0xa3);
  if (cookie) w.writeString(cookie);
  if (refreshDeletes) w.writeBoolean(true);
  w.startSequence(0x31);
  for (const u of uuids) w.writeBuffer(u, 0x04);
  w.endSequence();
  w.endSequence();
  return w.buffer;
}

describe('LdapMessageFramer', () => {
  it('reassembles messages split anywhere and splits several in one read, long lengths included', () => {
    const big = intermediate(7, syncIdSet(Array.from({ length: 40 }, () => uuid), false, 'rid=000,csn=x')); // > 127 bytes: long-form length
    const small = intermediate(8, syncIdSet([uuid], true));
    const stream = Buffer.concat([big, small, big]);
    for (const cut of [1, 2, 3, big.length - 1, big.length, big.length + 5, stream.length - 1]) {
      const f = new LdapMessageFramer();
      const got = [...f.push(stream.subarray(0, cut)), ...f.push(stream.subarray(cut))];
      expect(got.map((m) => [m.messageId, m.opTag])).toEqual([[7, 0x79], [8, 0x79], [7, 0x79]]);
      expect(f.pendingBytes).toBe(0);
    }
  });

  it('refuses bytes that are not LDAP rather than guessing', () => {
    expect(() => new LdapMessageFramer().push(Buffer.from('HTTP/1.1 400'))).toThrow(LdapFramingError);
  });
});

describe('Sync messages (RFC 4533)', () => {
  it('decodes the Sync Info variants and the UUID list of a syncIdSet', () => {
    const f = new LdapMessageFramer();
    const [m] = f.push(intermediate(3, syncIdSet([uuid, uuid], true, 'rid=000,csn=1')));
    const r = new BerReader(m!.op);
    expect(r.readString(0x80)).toBe(SyncOid.info);
    expect(decodeSyncInfo(r.readString(0x81, true)!)).toEqual({ kind: 'syncIdSet', cookie: Buffer.from('rid=000,csn=1'), refreshDeletes: true, uuids: [uuidText, uuidText] });

    const w = new BerWriter();
    w.startSequence(0xa2); // refreshPresent, refreshDone defaults to TRUE
    w.endSequence();
    expect(decodeSyncInfo(w.buffer)).toEqual({ kind: 'refreshPresent', cookie: undefined, refreshDone: true });
    const n = new BerWriter();
    n.writeString('c1', 0x80);
    expect(decodeSyncInfo(n.buffer)).toEqual({ kind: 'newCookie', cookie: Buffer.from('c1') });
  });

  it('decodes Sync State and Sync Done controls', () => {
    const w = new BerWriter();
    w.startSequence();
    w.writeEnumeration(3);
    w.writeBuffer(uuid, 0x04);
    w.writeString('ck');
    w.endSequence();
    expect(decodeSyncState(w.buffer)).toEqual({ state: 'delete', uuid: uuidText, cookie: Buffer.from('ck') });
    expect(decodeSyncDone(undefined)).toEqual({ cookie: undefined, refreshDeletes: false });
  });

  it('writes the Sync Request control: critical, refreshAndPersist, cookie only when there is one', () => {
    for (const cookie of [Buffer.from('rid=000,csn=1'), undefined]) {
      const w = new BerWriter();
      new SyncRequestControl('refreshAndPersist', cookie).write(w);
      const r = new BerReader(w.buffer);
      r.readSequence();
      expect(r.readString()).toBe(SyncOid.request);
      expect(r.readBoolean()).toBe(true);
      const v = new BerReader(r.readString(0x04, true)!);
      v.readSequence();
      expect(v.readEnumeration()).toBe(3);
      expect(v.remain > 0 ? v.readString() : undefined).toBe(cookie?.toString());
    }
  });
});

describe('parseSyncCookie', () => {
  it('accepts OpenLDAP cookies and keeps the newest CSN per server id', () => {
    const c = parseSyncCookie(Buffer.from('rid=000,sid=001,csn=20261122045736.895579Z#000000#001#000000;20261122045737.000000Z#000000#002#000000,delcsn=20261122045737.612454Z#000000#000#000000'));
    expect(c?.csnBySid).toEqual(new Map([['001', '20261122045736.895579Z#000000#001#000000'], ['002', '20261122045737.000000Z#000000#002#000000']]));
  });

  it('rejects garbage, empty, and cookies without a CSN', () => {
    for (const bad of ['', 'garbage', 'rid=000', 'rid=000,csn=garbage', 'rid=000,foo=1,csn=20261122045736.895579Z#000000#001#000000', '\u0000\u0001']) {
      expect(parseSyncCookie(Buffer.from(bad)), bad).toBeUndefined();
    }
    expect(parseSyncCookie(undefined)).toBeUndefined();
  });
});
