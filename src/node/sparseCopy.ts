import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

export interface CopyResult {
  size: number;
  sha256: string;
}

const BLOCK = 1024 * 1024;

function isZero(buf: Buffer, len: number): boolean {
  // Compare 8 bytes at a time where possible; zero blocks are the common case in images.
  let i = 0;
  for (; i + 8 <= len; i += 8) if (buf.readBigUInt64LE(i) !== 0n) return false;
  for (; i < len; i++) if (buf[i] !== 0) return false;
  return true;
}

/**
 * Copy `src` to `dst` in one pass: all-zero blocks are skipped (left as holes,
 * so sparse images stay sparse), the sha256 of the content is computed on the
 * way, and the result is fsynced before returning. `dst` must not exist.
 */
export async function sparseCopy(
  src: string,
  dst: string,
  onProgress?: (copied: number, total: number) => void,
  signal?: AbortSignal,
): Promise<CopyResult> {
  const hash = createHash('sha256');
  const input = await open(src, 'r');
  try {
    const { size } = await input.stat();
    const output = await open(dst, 'wx', 0o600);
    try {
      const buf = Buffer.allocUnsafe(BLOCK);
      let pos = 0;
      let lastReport = 0;
      while (pos < size) {
        signal?.throwIfAborted();
        const { bytesRead } = await input.read(buf, 0, Math.min(BLOCK, size - pos), pos);
        if (bytesRead === 0) break;
        hash.update(buf.subarray(0, bytesRead));
        if (!isZero(buf, bytesRead)) await output.write(buf, 0, bytesRead, pos);
        pos += bytesRead;
        if (onProgress && (pos - lastReport >= 64 * BLOCK || pos === size)) {
          onProgress(pos, size);
          lastReport = pos;
        }
      }
      if (pos !== size) throw new Error(`${src} changed size while being copied (${pos} of ${size} bytes read)`);
      await output.truncate(size);
      await output.sync();
    } finally {
      await output.close();
    }
    return { size, sha256: hash.digest('hex') };
  } finally {
    await input.close();
  }
}

/** sha256 and size of a file, for checking a copy against a manifest. */
export async function fileSha256(path: string): Promise<CopyResult> {
  const hash = createHash('sha256');
  const f = await open(path, 'r');
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
