import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { unlink } from 'node:fs/promises';
import { createExclusive, openRegularForRead } from './safeFs.js';
import { Sha256Worker } from './Sha256Worker.js';

export interface CopyResult {
  size: number;
  sha256: string;
}

/**
 * 1 MiB blocks in a ring of four (4 MiB, whatever the file's size): each
 * slot is read again as soon as its block is hashed and written, so the hash
 * finds up to 4 MiB read ahead. Measured here (600 MB qcow2, page cache
 * warm): 2 or 4 MiB blocks cost 2-3 times the system time, a ring of 16 was no
 * faster than one of 8, and one of 4 copied as fast as 8 in bench:backup
 * (0.95 × cp) with the process's peak RSS 64 instead of 68 MiB.
 */
const BLOCK = 1024 * 1024;
const RING = 4;
const PROGRESS_EVERY = 64 * 1024 * 1024;
/**
 * Start writing back this much dirty data while the copy goes on, instead of
 * all of it in the final fsync. Writes into the file wait while a datasync
 * runs (ext4 allocates the delayed blocks then), and the ring must ride that
 * out: at 128 MiB the hash starved for 40-90 ms at each flush, at 64 MiB for
 * 5-25 ms, at 32 MiB rarely.
 */
const FLUSH_EVERY = 32 * 1024 * 1024;
/** From this size on, hash on a worker thread; below, its start (25-60 ms) costs more than it saves. */
const WORKER_FROM = 64 * 1024 * 1024;
const ZEROS = Buffer.alloc(BLOCK);

function isZero(buf: Buffer): boolean {
  // memcmp in C; zero blocks are the common case in disk images.
  return buf.equals(ZEROS.subarray(0, buf.length));
}

/**
 * `p`, with a handler attached now: the copy awaits its reads, releases and
 * flushes later, in order, and a failure meanwhile (ENOSPC) must not count as
 * an unhandled rejection. Whoever awaits `p` still gets the failure.
 */
function awaitedLater<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

/** sha256 of blocks of the ring in order; `update` resolves when the block's slot may be reused. */
interface RingHasher {
  update(start: number, end: number): Promise<void>;
  digest(): Promise<string>;
  close(): Promise<void>;
}

/** Hashes on this thread, for files too small to be worth starting a worker. */
function inlineHasher(ring: Buffer): RingHasher {
  const hash = createHash('sha256');
  return {
    update: async (start, end) => void hash.update(ring.subarray(start, end)),
    digest: async () => hash.digest('hex'),
    close: async () => undefined,
  };
}

/**
 * Copy `src` to `dst` in one pass: all-zero blocks are skipped (left as holes,
 * so sparse images stay sparse), the sha256 of the content is computed on the
 * way, and the result is fsynced before returning. `dst` must not exist.
 *
 * sha256 runs at about the speed of `cp` + sync itself, so it must never
 * wait: for large files it runs on a worker thread (Sha256Worker) over the
 * ring the reads fill, while reads and writes go on in libuv's pool, and
 * write-back to disk starts during the copy rather than all at the end.
 *
 * `onProgress` gets (0, size) at the start, then bytes done every 64 MiB and
 * (size, size) at the end; nothing for an empty file. On any failure `dst`
 * is removed again.
 */
export async function sparseCopy(
  src: string,
  dst: string,
  onProgress?: (copied: number, total: number) => void,
  signal?: AbortSignal,
): Promise<CopyResult> {
  const input = await openRegularForRead(src);
  try {
    const { size } = await input.stat();
    const output = await createExclusive(dst, 0o600);
    let complete = false;
    let sha256: string;
    try {
      sha256 = await copyBlocks(input, output, size, src, onProgress, signal);
      await output.truncate(size);
      await output.sync();
      complete = true;
    } finally {
      await output.close();
      // A copy cut short (ENOSPC, abort, a read error) leaves nothing: the
      // file was created here (exclusively), and half of it only takes room.
      if (!complete) await unlink(dst).catch(() => undefined);
    }
    return { size, sha256 };
  } finally {
    await input.close();
  }
}

/** The copy proper: every block read once, hashed, written unless zero; returns the sha256. */
async function copyBlocks(
  input: FileHandle,
  output: FileHandle,
  size: number,
  src: string,
  onProgress: ((copied: number, total: number) => void) | undefined,
  signal: AbortSignal | undefined,
): Promise<string> {
  const blocks = Math.ceil(size / BLOCK);
  const slots = Math.max(1, Math.min(RING, blocks));
  const shared = new SharedArrayBuffer(slots * BLOCK);
  const ring = Buffer.from(shared);
  const hasher = size >= WORKER_FROM ? new Sha256Worker(shared) : inlineHasher(ring);
  /** Per slot: its block is hashed and written, so it may be read into again. */
  const released: Promise<unknown>[] = Array.from({ length: slots }, () => Promise.resolve());
  const reads: Promise<number>[] = [];
  let flushing: Promise<unknown> = Promise.resolve();
  const readBlock = async (i: number): Promise<number> => {
    await released[i % slots];
    const start = (i % slots) * BLOCK;
    const { bytesRead } = await input.read(ring, start, Math.min(BLOCK, size - i * BLOCK), i * BLOCK);
    return bytesRead;
  };
  try {
    signal?.throwIfAborted();
    // A report at 0: the copy's throughput is measured from its first byte, even for a file of one report.
    if (onProgress && size > 0) onProgress(0, size);
    for (let i = 0; i < slots && i < blocks; i++) reads[i] = awaitedLater(readBlock(i));
    let pos = 0;
    let lastReport = 0;
    let lastFlush = 0;
    for (let i = 0; i < blocks; i++) {
      signal?.throwIfAborted();
      const bytesRead = await (reads[i] as Promise<number>);
      delete reads[i];
      if (bytesRead !== Math.min(BLOCK, size - pos)) throw new Error(`${src} changed size while being copied (${pos + bytesRead} of ${size} bytes read)`);
      const start = (i % slots) * BLOCK;
      const block = ring.subarray(start, start + bytesRead);
      const hashed = hasher.update(start, start + bytesRead);
      const written = isZero(block) ? undefined : output.write(block, 0, bytesRead, pos);
      released[i % slots] = awaitedLater(Promise.all([hashed, written]));
      if (i + slots < blocks) reads[i + slots] = awaitedLater(readBlock(i + slots));
      pos += bytesRead;
      if (pos - lastFlush >= FLUSH_EVERY) {
        lastFlush = pos;
        flushing = awaitedLater(flushing.then(() => output.datasync()));
      }
      if (onProgress && (pos - lastReport >= PROGRESS_EVERY || pos === size)) {
        onProgress(pos, size);
        lastReport = pos;
      }
    }
    await Promise.all([...released, flushing]);
    return await hasher.digest();
  } finally {
    // Nothing may still write into `output` or read into the ring when the caller closes and removes.
    await Promise.allSettled([...reads, ...released, flushing]);
    await hasher.close();
  }
}

/** sha256 and size of a file, for checking a copy against a manifest. */
export async function fileSha256(path: string): Promise<CopyResult> {
  const hash = createHash('sha256');
  const f = await openRegularForRead(path);
  const buffers = [Buffer.allocUnsafe(BLOCK), Buffer.allocUnsafe(BLOCK)];
  let next = awaitedLater(f.read(buffers[0] as Buffer, 0, BLOCK, 0));
  try {
    let size = 0;
    for (let i = 0; ; i++) {
      const { bytesRead } = await next;
      if (bytesRead === 0) break;
      // The next block is read in libuv's pool while this one is hashed here.
      next = awaitedLater(f.read(buffers[(i + 1) % 2] as Buffer, 0, BLOCK, size + bytesRead));
      hash.update((buffers[i % 2] as Buffer).subarray(0, bytesRead));
      size += bytesRead;
    }
    return { size, sha256: hash.digest('hex') };
  } finally {
    await next.catch(() => undefined);
    await f.close();
  }
}
