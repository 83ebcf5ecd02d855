import { BerReader } from 'ldapts';

/** LDAPMessage protocol operation tags this project reads off the wire (RFC 4511 §4.2 ff). */
export const LdapOp = {
  bindResponse: 0x61,
  searchResultEntry: 0x64,
  searchResultDone: 0x65,
  searchResultReference: 0x73,
  extendedResponse: 0x78,
  /** IntermediateResponse: what ldapts 8 cannot parse, and what syncrepl needs. */
  intermediateResponse: 0x79,
} as const;

/** One control of a received message, its value still encoded. */
export interface RawControl {
  type: string;
  critical: boolean;
  value: Buffer | undefined;
}

/** A received LDAPMessage, split into its parts; `op` holds the protocolOp's contents only. */
export interface LdapMessage {
  messageId: number;
  /** protocolOp tag, e.g. LdapOp.searchResultEntry */
  opTag: number;
  /** contents of the protocolOp (after its tag and length) */
  op: Buffer;
  controls: RawControl[];
}

/** The common part of every LDAP response (LDAPResult, RFC 4511 §4.1.9). */
export interface LdapResult {
  resultCode: number;
  matchedDn: string;
  diagnosticMessage: string;
}

/** Messages above this are refused: a corrupt length must not make us buffer gigabytes. */
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** Thrown when the byte stream is not LDAP; the connection cannot be trusted after that. */
export class LdapFramingError extends Error {
  override name = 'LdapFramingError';
}

/**
 * Cuts a TCP (or TLS) byte stream into whole LDAPMessages. ldapts's own
 * parser gives up on protocol operations it does not know (0x79) and then
 * drops the rest of the read; this one only frames (tag, BER length) and
 * leaves the interpretation to the caller, so no message is ever lost.
 */
export class LdapMessageFramer {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** Adds bytes from the socket; returns every message completed by them, in order. */
  push(data: Buffer): LdapMessage[] {
    this.chunks.push(data);
    this.buffered += data.length;
    const out: LdapMessage[] = [];
    let buf = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks, this.buffered);
    let offset = 0;
    for (;;) {
      const size = frameSize(buf, offset);
      if (size === undefined || buf.length - offset < size) break;
      out.push(parseLdapMessage(buf.subarray(offset, offset + size)));
      offset += size;
    }
    buf = buf.subarray(offset);
    // Copy the remainder so a big socket chunk is not kept alive by a small tail.
    this.chunks = buf.length > 0 ? [Buffer.from(buf)] : [];
    this.buffered = buf.length;
    return out;
  }

  /** Bytes received that do not form a whole message yet. */
  get pendingBytes(): number {
    return this.buffered;
  }
}

/** Total size of the message starting at `offset` (tag + length + contents), or undefined if the header is incomplete. */
function frameSize(buf: Buffer, offset: number): number | undefined {
  if (buf.length - offset < 2) return undefined;
  const tag = buf[offset];
  if (tag !== 0x30) throw new LdapFramingError(`expected an LDAPMessage SEQUENCE (0x30), got 0x${(tag ?? 0).toString(16)}`);
  const first = buf[offset + 1] as number;
  if (first < 0x80) return 2 + first;
  const lengthBytes = first & 0x7f;
  if (lengthBytes === 0 || lengthBytes > 4) throw new LdapFramingError(`unsupported BER length form 0x${first.toString(16)}`);
  if (buf.length - offset < 2 + lengthBytes) return undefined;
  let length = 0;
  for (let i = 0; i < lengthBytes; i++) length = length * 256 + (buf[offset + 2 + i] as number);
  if (length > MAX_MESSAGE_BYTES) throw new LdapFramingError(`LDAP message of ${length} bytes exceeds the ${MAX_MESSAGE_BYTES}-byte limit`);
  return 2 + lengthBytes + length;
}

/** Splits one whole LDAPMessage into message id, protocolOp and controls. */
export function parseLdapMessage(message: Buffer): LdapMessage {
  const r = new BerReader(message);
  if (r.readSequence(0x30) === null) throw new LdapFramingError('truncated LDAPMessage');
  const messageId = r.readInt();
  if (messageId === null) throw new LdapFramingError('LDAPMessage without a message id');
  const opTag = r.readSequence();
  if (opTag === null) throw new LdapFramingError(`message ${messageId}: truncated protocolOp`);
  const opStart = r.offset;
  const opEnd = opStart + r.length;
  if (opEnd > message.length) throw new LdapFramingError(`message ${messageId}: protocolOp longer than the message`);
  const op = message.subarray(opStart, opEnd);
  r.offset = opEnd;
  const controls: RawControl[] = [];
  if (r.remain > 0 && r.peek() === 0xa0) {
    r.readSequence(0xa0);
    const end = r.offset + r.length;
    while (r.offset < end) {
      r.readSequence(0x30);
      const controlEnd = r.offset + r.length;
      const type = r.readString() ?? '';
      let critical = false;
      let value: Buffer | undefined;
      if (r.offset < controlEnd && r.peek() === 0x01) critical = r.readBoolean() ?? false;
      if (r.offset < controlEnd && r.peek() === 0x04) value = r.readString(0x04, true) ?? undefined;
      r.offset = controlEnd;
      controls.push({ type, critical, value });
    }
  }
  return { messageId, opTag, op, controls };
}

/** Reads the LDAPResult at the start of a response's protocolOp; `reader` is left after it. */
export function readLdapResult(reader: BerReader): LdapResult {
  const resultCode = reader.readEnumeration();
  if (resultCode === null) throw new LdapFramingError('LDAPResult without a result code');
  return { resultCode, matchedDn: reader.readString() ?? '', diagnosticMessage: reader.readString() ?? '' };
}
