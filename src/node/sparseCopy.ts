import type { FileHandle } from 'node:fs/promises';
import { unlink } from 'node:fs/promises';
import { fdatasync, read, write } from 'node:fs';
import { createExclusive, openRegularForRead } from './safeFs.js';
import { Sha256Worker } from './Sha256Worker.js';
import { contentDigest, DIGEST_BLOCK, inlineBackend, isZero, NEW_DIGEST, StreamDigest, type DigestKind, type DigestedFile, type HashBackend } from './fileDigest.js';

export type CopyResult = DigestedFile;

/**
 * 256 KiB blocks in a ring of sixteen (4 MiB, whatever the file's size):
 * each slot is read again as soon as its block is hashed and written.
 * Measured here (2 GiB file, page cache warm): reading and writing in 1 MiB
 * blocks cost twice the system time of 256 KiB blocks (1.0-1.1 s against
 * 0.6 s for a synchronous loop) and took 1.6-2.4 times as long; 128 KiB and
 * 512 KiB were in between. A ring of 16 copied in 1.9-2.1 s where 8 took
 * 2.1-2.6 s (writes wait while a datasync runs, and the ring rides that
 * out); 32 was at most a little faster, for 4 MiB more RSS.
 */
const BLOCK = DIGEST_BLOCK;
const RING = 16;
const PROGRESS_EVERY = 64 * 1024 * 1024;
/**
 * Start writing back this much dirty data while the copy goes on, instead of
 * all of it in the final fsync (the kernel would start only at gigabytes
 * dirty): the copy and the disk's write-back then overlap, as `cp` + `sync`
 * cannot. Measured here, 8 runs each, alternating (577 MiB of random data,
 * medians): every 128 MiB 0.95 s, 64 MiB 0.82 s, 32 MiB 0.71 s, 16 MiB
 * 0.67 s, 8 MiB 0.64 s, 4 MiB 0.65 s, 2 MiB 0.66 s (cp + sync 0.60 s); on a
 * data-heavy 2 GiB file 8, 16 and 32 MiB were alike.
 */
const FLUSH_EVERY = 8 * 1024 * 1024;
/**
 * From this size on, a copy that starts while another of this process is
 * hashing gets a worker thread of its own; below, the worker's start
 * (25-60 ms) costs more than it saves.
 */
const WORKER_FROM = 64 * 1024 * 1024;
/** Copies of this process hashing on the main thread right now. */
let inlineHashing = 0;

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
      // A file that grew meanwhile was copied only in part: a source must not change while copied.
      const after = (await input.stat()).size;
      if (after !== size) throw new Error(`${src} changed size while being copied (${size} bytes when it started, ${after} now)`);
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
  signal?.throwIfAborted();
  const slots = Math.max(1, Math.min(RING, Math.ceil(size / BLOCK)));
  const shared = new SharedArrayBuffer(slots * BLOCK);
  const ring = Buffer.from(shared);
  const onWorker = inlineHashing > 0 && size >= WORKER_FROM;
  const backend: HashBackend = onWorker ? new Sha256Worker(shared) : inlineBackend(ring);
  if (!onWorker) inlineHashing++;
  let copied = false;
  try {
    const digest = new StreamDigest(kind, backend);
    // A report at 0: the copy's throughput is measured from its first byte, even for a file of one report.
    if (onProgress && size > 0) onProgress(0, size);
    await new BlockPipeline({ input: input.fd, output: output.fd, size, src, ring, slots, digest, onProgress, signal }).run();
    const result = await digest.result();
    copied = true;
    return result;
  } finally {
    if (!onWorker) inlineHashing--;
    // The copy's own failure is what the caller must hear, not a worker that also failed to end.
    await backend.close().catch((err: unknown) => {
      if (copied) throw err;
    });
  }
}

interface PipelineOptions {
  input: number;
  output: number;
  size: number;
  src: string;
  ring: Buffer;
  slots: number;
  digest: StreamDigest;
  onProgress: ((copied: number, total: number) => void) | undefined;
  signal: AbortSignal | undefined;
}

/**
 * Reads run ahead into the free slots of the ring, blocks are hashed in
 * order as their reads complete, and every block not all zeros is written
 * from its slot; a slot is read into again once nothing uses it. Driven by
 * fs callbacks rather than promises: measured, that takes 0.2 s of the main
 * thread's 1.9 s off a 2 GiB copy, and the main thread (which hashes) is
 * what limits the copy. `run` settles only when no read, write, hash or
 * datasync is in flight, so the caller may close and remove the files.
 */
class BlockPipeline {
  private readonly blocks: number;
  /** Per slot, what still uses it (its read until hashed, its write, its hash on a worker); 0: free. */
  private readonly holds: Int8Array;
  private readonly bytesRead: Int32Array;
  private readonly readDone: Uint8Array;
  private nextToRead = 0;
  private nextToHash = 0;
  private inFlight = 0;
  private writtenSinceFlush = 0;
  private flushing = false;
  private lastReport = 0;
  private failure: { err: unknown } | undefined;
  private settled = false;
  private resolve: () => void = () => undefined;
  private reject: (err: unknown) => void = () => undefined;

  constructor(private readonly o: PipelineOptions) {
    this.blocks = Math.ceil(o.size / BLOCK);
    this.holds = new Int8Array(o.slots);
    this.bytesRead = new Int32Array(o.slots);
    this.readDone = new Uint8Array(o.slots);
  }

  run(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
      this.issueReads();
      this.settleIfDone();
    });
  }

  private issueReads(): void {
    const { slots, size, ring, input } = this.o;
    while (!this.failure && this.nextToRead < this.blocks && this.nextToRead - this.nextToHash < slots && this.holds[this.nextToRead % slots] === 0) {
      const i = this.nextToRead++;
      const slot = i % slots;
      this.holds[slot] = 1;
      this.readDone[slot] = 0;
      this.inFlight++;
      read(input, ring, slot * BLOCK, Math.min(BLOCK, size - i * BLOCK), i * BLOCK, (err, n) => {
        this.inFlight--;
        if (err) return this.fail(err);
        this.bytesRead[slot] = n;
        this.readDone[slot] = 1;
        if (i === this.nextToHash) this.drain();
        this.settleIfDone();
      });
    }
  }

  /** Hashes (in order) and starts writing every block whose read is done. */
  private drain(): void {
    const { slots, size, ring, digest, onProgress, signal, src } = this.o;
    try {
      while (!this.failure && this.nextToHash < this.blocks && this.readDone[this.nextToHash % slots] === 1) {
        signal?.throwIfAborted();
        const i = this.nextToHash;
        const slot = i % slots;
        const n = this.bytesRead[slot] as number;
        const pos = i * BLOCK;
        if (n !== Math.min(BLOCK, size - pos)) throw new Error(`${src} changed size while being copied (${pos + n} of ${size} bytes read)`);
        this.readDone[slot] = 0;
        const start = slot * BLOCK;
        const zero = isZero(ring.subarray(start, start + n));
        const hashed = digest.add(start, start + n, zero);
        if (hashed) this.hold(slot, hashed);
        if (!zero) this.writeFully(slot, start, n, pos);
        this.nextToHash++;
        this.release(slot); // its read's hold
        const done = pos + n;
        if (onProgress && (done - this.lastReport >= PROGRESS_EVERY || done === size)) {
          this.lastReport = done;
          onProgress(done, size);
        }
      }
    } catch (err) {
      this.fail(err);
    }
    this.issueReads();
  }

  private writeFully(slot: number, offset: number, length: number, position: number): void {
    this.holds[slot] = (this.holds[slot] as number) + 1;
    this.inFlight++;
    write(this.o.output, this.o.ring, offset, length, position, (err, written) => {
      this.inFlight--;
      if (err) return this.fail(err);
      if (written === 0) return this.fail(new Error(`writing the copy made no progress at byte ${position}`));
      this.writtenSinceFlush += written;
      // A regular file takes all of it unless something is wrong; then the rest's write says what.
      if (written < length) this.writeFully(slot, offset + written, length - written, position + written);
      this.release(slot);
      this.maybeFlush();
      this.settleIfDone();
    });
  }

  private hold(slot: number, until: Promise<void>): void {
    this.holds[slot] = (this.holds[slot] as number) + 1;
    this.inFlight++;
    until.then(
      () => {
        this.inFlight--;
        this.release(slot);
        this.settleIfDone();
      },
      (err: unknown) => {
        this.inFlight--;
        this.fail(err);
      },
    );
  }

  private release(slot: number): void {
    this.holds[slot] = (this.holds[slot] as number) - 1;
    if (this.holds[slot] === 0) this.issueReads();
  }

  private maybeFlush(): void {
    if (this.flushing || this.failure || this.writtenSinceFlush < FLUSH_EVERY) return;
    this.flushing = true;
    this.writtenSinceFlush = 0;
    this.inFlight++;
    fdatasync(this.o.output, (err) => {
      this.inFlight--;
      this.flushing = false;
      if (err) return this.fail(err);
      this.maybeFlush();
      this.settleIfDone();
    });
  }

  private fail(err: unknown): void {
    this.failure ??= { err };
    this.settleIfDone();
  }

  private settleIfDone(): void {
    if (this.settled || this.inFlight > 0) return;
    if (this.failure) {
      this.settled = true;
      this.reject(this.failure.err);
    } else if (this.nextToHash === this.blocks) {
      this.settled = true;
      this.resolve();
    }
  }
}
