import { createHash } from 'node:crypto';
import { unlink } from 'node:fs/promises';
import { createExclusive, openRegularForRead } from './safeFs.js';

export interface CopyResult {
  size: number;
  sha256: string;
}

/**
 * 1 MiB blocks in a ring of eight, four read ahead: the hash never waits for a
 * read, writes never hold up the hash, and a copy of any size stays at 8 MiB
 * of buffers (larger blocks measured no faster here).
 */
const BLOCK = 1024 * 1024;
const RING = 8;
const READ_AHEAD = 4;
const ZEROS = Buffer.alloc(BLOCK);
const PROGRESS_EVERY = 64 * 1024 * 1024;
/** Start writing back this much dirty data while the copy goes on, instead of all of it in the final fsync. */
const FLUSH_EVERY = 64 * 1024 * 1024;

function isZero(buf: Buffer, len: number): boolean {
  // memcmp in C; zero blocks are the common case in disk images.
  return buf.subarray(0, len).equals(ZEROS.subarray(0, len));
}

/**
 * Copy `src` to `dst` in one pass: all-zero blocks are skipped (left as holes,
 * so sparse images stay sparse), the sha256 of the content is computed on the
 * way, and the result is fsynced before returning. `dst` must not exist.
 *
 * sha256 runs at about the speed of `cp` itself, so it must never wait: reads
 * run ahead and writes run behind in libuv's pool while this thread hashes,
 * and write-back to disk starts during the copy rather than all at the end.
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
  const hash = createHash('sha256');
  const input = await openRegularForRead(src);
  try {
    const { size } = await input.stat();
    const output = await createExclusive(dst, 0o600);
    const buffers = Array.from({ length: RING }, () => Buffer.allocUnsafe(BLOCK));
    const writes: Promise<unknown>[] = Array.from({ length: RING }, () => Promise.resolve());
    const blocks = Math.ceil(size / BLOCK);
    const reads: Promise<{ bytesRead: number }>[] = [];
    const readBlock = async (i: number) => {
      await writes[i % RING]; // the buffer's previous block is written
      return input.read(buffers[i % RING] as Buffer, 0, Math.min(BLOCK, size - i * BLOCK), i * BLOCK);
    };
    let flushing: Promise<unknown> = Promise.resolve();
    let complete = false;
    try {
      signal?.throwIfAborted();
      // A report at 0: the copy's throughput is measured from its first byte, even for a file of one report.
      if (onProgress && size > 0) onProgress(0, size);
      for (let i = 0; i < Math.min(READ_AHEAD, blocks); i++) reads[i] = readBlock(i);
      let pos = 0;
      let lastReport = 0;
      let lastFlush = 0;
      for (let i = 0; i < blocks; i++) {
        signal?.throwIfAborted();
        const { bytesRead } = await (reads[i] as Promise<{ bytesRead: number }>);
        delete reads[i];
        if (bytesRead !== Math.min(BLOCK, size - pos)) throw new Error(`${src} changed size while being copied (${pos + bytesRead} of ${size} bytes read)`);
        if (i + READ_AHEAD < blocks) reads[i + READ_AHEAD] = readBlock(i + READ_AHEAD);
        const buf = buffers[i % RING] as Buffer;
        hash.update(buf.subarray(0, bytesRead));
        if (!isZero(buf, bytesRead)) writes[i % RING] = output.write(buf, 0, bytesRead, pos);
        pos += bytesRead;
        if (pos - lastFlush >= FLUSH_EVERY) {
          lastFlush = pos;
          flushing = flushing.then(() => output.datasync());
        }
        if (onProgress && (pos - lastReport >= PROGRESS_EVERY || pos === size)) {
          onProgress(pos, size);
          lastReport = pos;
        }
      }
      await Promise.all([...writes, flushing]);
      await output.truncate(size);
      await output.sync();
      complete = true;
    } finally {
      await Promise.allSettled([...reads, ...writes, flushing]);
      await output.close();
      // A copy cut short (ENOSPC, abort, a read error) leaves nothing: the
      // file was created here (exclusively), and half of it only takes room.
      if (!complete) await unlink(dst).catch(() => undefined);
    }
    return { size, sha256: hash.digest('hex') };
  } finally {
    await input.close();
  }
}

/** sha256 and size of a file, for checking a copy against a manifest. */
export async function fileSha256(path: string): Promise<CopyResult> {
  const hash = createHash('sha256');
  const f = await openRegularForRead(path);
  try {
    const buf = Buffer.allocUnsafe(BLOCK);
    let size = 0;
    for (;;) {
      const { bytesRead } = await f.read(buf, 0, BLOCK, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      size += bytesRead;
    }
    return { size, sha256: hash.digest('hex') };
  } finally {
    await f.close();
  }
}
