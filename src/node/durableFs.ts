import { lstat, open, rename, rm, stat, mkdir } from 'node:fs/promises';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { createExclusive } from './safeFs.js';
import path from 'node:path';
import { sparseCopy } from './sparseCopy.js';

/** fsync a directory so a rename in it survives a crash. */
export async function syncDir(dir: string): Promise<void> {
  await syncFile(dir);
}

/** fsync what another process (qemu-img) wrote into a file, before it is renamed or recorded. */
export async function syncFile(file: string): Promise<void> {
  const h = await open(file, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/**
 * Write through `<file>.partial`, fsync, rename: readers see all or nothing.
 * The partial file is created exclusively and never through a symlink, and
 * written, synced and closed on that one descriptor.
 */
export async function writeFileDurably(file: string, content: string | Buffer, mode = 0o640): Promise<void> {
  const partial = `${file}.partial`;
  await rm(partial, { force: true });
  const h = await createExclusive(partial, mode);
  try {
    await h.writeFile(content);
    await h.sync();
  } finally {
    await h.close();
  }
  await rename(partial, file);
  await syncDir(path.dirname(file));
}

export async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

export async function sameFilesystem(a: string, b: string): Promise<boolean> {
  const [sa, sb] = await Promise.all([stat(a), stat(b)]);
  return sa.dev === sb.dev;
}

/**
 * Move a file, also across filesystems (copy, fsync, rename, unlink). Used
 * for the state file on a RAM disk; disks never take this path.
 */
export async function moveFile(src: string, dst: string, onProgress?: (done: number, total: number) => void): Promise<void> {
  // Only the file itself moves: a symlink put in its place would carry its target into the backup.
  const st = await lstat(src);
  if (!st.isFile()) throw new BackupError(`${src} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a regular file'}; refusing to move it`, ReturnCode.symlinkRefused);
  try {
    await rename(src, dst);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    const partial = `${dst}.partial`;
    await rm(partial, { force: true });
    try {
      await sparseCopy(src, partial, onProgress);
      await rename(partial, dst);
    } catch (copyErr) {
      await rm(partial, { force: true });
      throw copyErr;
    }
    await rm(src);
  }
  await syncDir(path.dirname(dst));
}

/** mkdir -p; follows symlinks in existing components. Below a root, use mkdirBelow (safeFs.ts). */
export async function mkdirp(dir: string, mode: number): Promise<void> {
  await mkdir(dir, { recursive: true, mode });
}
