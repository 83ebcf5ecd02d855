import type { FileHandle } from 'node:fs/promises';
import { unlink } from 'node:fs/promises';
import { createExclusive, openRegularForRead } from './safeFs.js';
import { Sha256Worker } from './Sha256Worker.js';
import { contentDigest, DIGEST_BLOCK, inlineBackend, isZero, NEW_DIGEST, StreamDigest, type DigestKind, type DigestedFile, type HashBackend } from './fileDigest.js';

export type CopyResult = DigestedFile;

/**
 * 256 KiB blocks in a ring of eight (2 MiB, whatever the file's size): each
 * slot is read again as soon as its block is hashed and written. Measured
 * here (2 GiB file, page cache warm, libvirt 9 host): reading and writing in
 * 1 MiB blocks cost twice the system time of 256 KiB blocks (1.0-1.1 s
 * against 0.6 s for a synchronous loop) and took 1.6-2.4 times as long;
 * 128 KiB and 512 KiB were in between. A ring of 16 was no faster than 8.
 */
const BLOCK = DIGEST_BLOCK;
const RING = 8;
const PROGRESS_EVERY = 64 * 1024 * 1024;
/**
 * Start writing back this much dirty data while the copy goes on, instead of
 * all of it in the final fsync. Writes into the file wait while a datasync
 * runs (ext4 allocates the delayed blocks then), and the ring must ride that
 * out: at 128 MiB the hash starved for 40-90 ms at each flush, at 64 MiB for
 * 5-25 ms, at 32 MiB rarely.
 */
const FLUSH_EVERY = 32 * 1024 * 1024;
/**
 * From this size on, a copy that starts while another of this process is
 * hashing gets a worker thread of its own; below, the worker's start
 * (25-60 ms) costs more than it saves.
 */
const WORKER_FROM = 64 * 1024 * 1024;
/** Copies of this process hashing on the main thread right now. */
let inlineHashing = 0;

/**
 * `p`, with a handler attached now: the copy awaits its reads, releases and
 * flushes later, in order, and a failure meanwhile (ENOSPC) must not count as
 * an unhandled rejection. Whoever awaits `p` still gets the failure.
 */
function awaitedLater<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

/**
 * Copy `src` to `dst` in one pass: all-zero blocks are skipped (left as holes,
 * so sparse images stay sparse), the digest of the content (`kind`, see
 * fileDigest.ts; the one a manifest records for the file when copying it
 * back) is computed on the way, and the result is fsynced before returning.
 * `dst` must not exist.
 *
 * The hash runs on the main thread while reads and writes go on in libuv's
 * pool: sha256PerMiB hashes no MiB of zeros, and a worker thread would add
 * 13 MiB to the process for little gain. A copy that starts while another
 * one hashes on the main thread gets a worker (Sha256Worker), so that
 * concurrent copies do not share one core. Write-back to disk starts during
 * the copy rather than all at the end.
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
  kind: DigestKind = NEW_DIGEST,
): Promise<CopyResult> {
  const input = await openRegularForRead(src);
  try {
    const { size } = await input.stat();
    const output = await createExclusive(dst, 0o600);
    let complete = false;
    let digest: string;
    try {
      digest = await copyBlocks(input, output, size, src, kind, onProgress, signal);
      await output.truncate(size);
      await output.sync();
      complete = true;
    } finally {
      await output.close();
      // A copy cut short (ENOSPC, abort, a read error) leaves nothing: the
      // file was created here (exclusively), and half of it only takes room.
      if (!complete) await unlink(dst).catch(() => undefined);
    }
    return { size, ...contentDigest(kind, digest) };
  } finally {
    await input.close();
  }
}

/** The copy proper: every block read once, hashed, written unless zero; returns the digest. */
async function copyBlocks(
  input: FileHandle,
  output: FileHandle,
  size: number,
  src: string,
  kind: DigestKind,
  onProgress: ((copied: number, total: number) => void) | undefined,
  signal: AbortSignal | undefined,
): Promise<string> {
  const blocks = Math.ceil(size / BLOCK);
  const slots = Math.max(1, Math.min(RING, blocks));
  const shared = new SharedArrayBuffer(slots * BLOCK);
  const ring = Buffer.from(shared);
  const onWorker = inlineHashing > 0 && size >= WORKER_FROM;
  const backend: HashBackend = onWorker ? new Sha256Worker(shared) : inlineBackend(ring);
  if (!onWorker) inlineHashing++;
  const digest = new StreamDigest(kind, backend);
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
      const zero = isZero(block);
      const hashed = digest.add(start, start + bytesRead, zero);
      const written = zero ? undefined : output.write(block, 0, bytesRead, pos);
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
    return await digest.result();
  } finally {
    if (!onWorker) inlineHashing--;
    // Nothing may still write into `output` or read into the ring when the caller closes and removes.
    await Promise.allSettled([...reads, ...released, flushing]);
    await backend.close();
  }
}
