import { createHash, type Hash } from 'node:crypto';
import { openRegularForRead } from './safeFs.js';

/**
 * How a manifest records a file's content.
 *
 * `sha256PerMiB` (written since 2026-11-30): the sha256 of the text that
 * `split -b 1048576 --filter=sha256sum FILE` prints — for every MiB of the
 * file in order (the last piece may be shorter) the line `<sha256 of the
 * piece>  -\n`; an empty file has no lines. Every MiB is hashed on its own,
 * so a MiB of zeros (most of a disk image, holes included) costs a compare
 * instead of a hash, and the whole stays checkable with coreutils alone:
 * `split -b 1048576 --filter=sha256sum FILE | sha256sum`.
 *
 * `sha256` (written before): the plain sha256 of the whole file, `sha256sum FILE`.
 * Still read and checked; nothing writes it any more.
 */
export type DigestKind = 'sha256PerMiB' | 'sha256';

/** Exactly one of the two, as a manifest entry holds it. */
export type ContentDigest = { sha256PerMiB: string; sha256?: undefined } | { sha256: string; sha256PerMiB?: undefined };

export type DigestedFile = { size: number } & ContentDigest;

/** What new copies record. */
export const NEW_DIGEST: DigestKind = 'sha256PerMiB';

export const MiB = 1024 * 1024;
const ZEROS = Buffer.alloc(MiB);
const ZERO_MIB_LINE = `${createHash('sha256').update(ZEROS).digest('hex')}  -\n`;

export function digestKindOf(d: ContentDigest): DigestKind {
  return d.sha256PerMiB !== undefined ? 'sha256PerMiB' : 'sha256';
}

export function digestValue(d: ContentDigest): string {
  return d.sha256PerMiB ?? (d.sha256 as string);
}

/** `{ [kind]: value }`, to spread into a manifest entry. */
export function contentDigest(kind: DigestKind, value: string): ContentDigest {
  return kind === 'sha256PerMiB' ? { sha256PerMiB: value } : { sha256: value };
}

/** Only the size and digest of a record (a manifest entry carries more). */
export function recordedDigest(f: DigestedFile): DigestedFile {
  return { size: f.size, ...contentDigest(digestKindOf(f), digestValue(f)) };
}

/** Why `actual` is not the file `expected` records (size or digest), or undefined when it is. */
export function digestMismatch(actual: DigestedFile, expected: DigestedFile): string | undefined {
  const kind = digestKindOf(expected);
  const a = digestKindOf(actual) === kind ? digestValue(actual) : `(no ${kind})`;
  const e = digestValue(expected);
  if (actual.size === expected.size && a === e) return undefined;
  return `size ${actual.size} vs ${expected.size}, ${kind} ${a.slice(0, 12)}… vs ${e.slice(0, 12)}…`;
}

/**
 * Where the bytes are hashed: on this thread, or on a worker (Sha256Worker).
 * Calls are taken in order; `update` resolves when bytes [start, end) of the
 * buffer may be overwritten; `digest` ends one hash and starts the next.
 */
export interface HashBackend {
  update(start: number, end: number): Promise<void> | undefined;
  zeros(n: number): void;
  digest(): Promise<string> | string;
  close(): Promise<void>;
}

/** Hashing on this thread: 256 KiB take about 0.2 ms, short enough not to hold up the event loop. */
export function inlineBackend(buffer: Buffer): HashBackend {
  let hash: Hash = createHash('sha256');
  return {
    update: (start, end) => void hash.update(buffer.subarray(start, end)),
    zeros: (n) => {
      for (let left = n; left > 0; left -= MiB) hash.update(ZEROS.subarray(0, Math.min(MiB, left)));
    },
    digest: () => {
      const d = hash.digest('hex');
      hash = createHash('sha256');
      return d;
    },
    close: async () => undefined,
  };
}

/**
 * The digest of a file's content, fed block by block in order. For
 * sha256PerMiB the blocks must not straddle a MiB boundary (blocks of a
 * divisor of a MiB at multiples of their size never do); an all-zero MiB is
 * never hashed. `add` says whether the block is all zeros (the copy checks
 * that anyway) and resolves when its bytes may be overwritten.
 */
export class StreamDigest {
  private readonly lines = createHash('sha256');
  /** The per-MiB lines, appended in order as their digests arrive. */
  private linesDone: Promise<void> = Promise.resolve();
  private inMiB = 0;
  /** Leading zero bytes of the current MiB, not yet given to the backend. */
  private zerosPending = 0;
  private hashing = false;

  constructor(readonly kind: DigestKind, private readonly backend: HashBackend) {}

  add(start: number, end: number, zero: boolean): Promise<void> | undefined {
    if (this.kind === 'sha256') return this.backend.update(start, end);
    const n = end - start;
    if (this.inMiB + n > MiB) throw new Error(`a block of ${n} bytes at ${this.inMiB} straddles a MiB boundary`);
    let released: Promise<void> | undefined;
    if (zero && !this.hashing) {
      this.zerosPending += n;
    } else {
      if (!this.hashing) {
        this.hashing = true;
        if (this.zerosPending > 0) this.backend.zeros(this.zerosPending);
      }
      released = this.backend.update(start, end);
    }
    this.inMiB += n;
    if (this.inMiB === MiB) this.endPiece();
    return released;
  }

  /** The digest, once every block was added. */
  async result(): Promise<string> {
    if (this.kind === 'sha256') return this.backend.digest();
    this.endPiece();
    await this.linesDone;
    return this.lines.digest('hex');
  }

  private endPiece(): void {
    if (this.inMiB === 0) return;
    if (this.hashing) {
      const d = Promise.resolve(this.backend.digest());
      // Handled now: a copy that fails never asks for the result, and its worker,
      // closed then, rejects this digest — an unhandled rejection would end the
      // daemon. result() still sees the failure.
      d.catch(() => undefined);
      this.linesDone = this.linesDone.then(async () => void this.lines.update(`${await d}  -\n`));
      this.linesDone.catch(() => undefined);
    } else {
      // All zeros: a whole MiB has a constant line; a shorter last piece is hashed once, here.
      const line = this.inMiB === MiB ? ZERO_MIB_LINE : `${createHash('sha256').update(ZEROS.subarray(0, this.inMiB)).digest('hex')}  -\n`;
      this.linesDone = this.linesDone.then(() => void this.lines.update(line));
    }
    this.inMiB = 0;
    this.zerosPending = 0;
    this.hashing = false;
  }
}

/** Reads and hashes in blocks of this size; see sparseCopy for why not larger. */
export const DIGEST_BLOCK = 256 * 1024;

/** Whether `buf` is all zeros (memcmp in C; zero blocks are the common case in disk images). */
export function isZero(buf: Buffer): boolean {
  return buf.equals(ZEROS.subarray(0, buf.length));
}

/** Size and digest of a file, for checking it against a manifest (`kind`: the one the manifest records). */
export async function fileDigest(path: string, kind: DigestKind = NEW_DIGEST): Promise<DigestedFile> {
  const f = await openRegularForRead(path);
  const buffer = Buffer.allocUnsafe(2 * DIGEST_BLOCK);
  const digest = new StreamDigest(kind, inlineBackend(buffer));
  const readInto = (slot: number, position: number) => f.read(buffer, slot * DIGEST_BLOCK, DIGEST_BLOCK, position);
  let next = readInto(0, 0);
  next.catch(() => undefined);
  try {
    let size = 0;
    for (let i = 0; ; i++) {
      const { bytesRead } = await next;
      if (bytesRead === 0) break;
      const start = (i % 2) * DIGEST_BLOCK;
      // The next block is read in libuv's pool while this one is hashed here.
      next = readInto((i + 1) % 2, size + bytesRead);
      next.catch(() => undefined);
      digest.add(start, start + bytesRead, isZero(buffer.subarray(start, start + bytesRead)));
      size += bytesRead;
    }
    return { size, ...contentDigest(kind, await digest.result()) };
  } finally {
    await next.catch(() => undefined);
    await f.close();
  }
}
