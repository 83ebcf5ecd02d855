import { constants } from 'node:fs';
import { lstat, mkdir, mkdtemp, open, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { openNoFollow } from '../hypervisor/openNoFollow.js';
import { isBelow } from './backupDisks.js';

/**
 * File operations below the backup, retain and image roots that never follow
 * a symbolic link. Those directories are writable by the image group: a
 * member can put a symlink where root is about to chmod, copy or create, and
 * root would act on /etc instead. The roots themselves are the node's
 * configuration (STONEY_ALLOWED_ROOTS, STONEY_IMAGE_ROOTS) and are trusted;
 * every component below them is checked with lstat.
 */

function symlinkError(p: string): BackupError {
  return new BackupError(`${p} is a symbolic link; refusing to follow it`, ReturnCode.symlinkRefused);
}

/** Each existing component of `p` below `root` must be a real directory (the last one: `last`). */
export async function assertNoSymlinkBelow(root: string, p: string, last: 'directory' | 'file' | 'any' = 'any'): Promise<void> {
  if (!isBelow(root, p)) throw new BackupError(`${p} is not below ${root}`, ReturnCode.directoryNotAllowed);
  const parts = path.relative(path.resolve(root), path.resolve(p)).split(path.sep);
  let cur = path.resolve(root);
  for (const [i, part] of parts.entries()) {
    cur = path.join(cur, part);
    let st;
    try {
      st = await lstat(cur);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    if (st.isSymbolicLink()) throw symlinkError(cur);
    const isLast = i === parts.length - 1;
    if (!isLast && !st.isDirectory()) throw new BackupError(`${cur} is not a directory`, ReturnCode.symlinkRefused);
    if (isLast && last === 'directory' && !st.isDirectory()) throw new BackupError(`${cur} is not a directory`, ReturnCode.symlinkRefused);
    if (isLast && last === 'file' && !st.isFile()) throw new BackupError(`${cur} is not a regular file`, ReturnCode.symlinkRefused);
  }
}

/**
 * mkdir -p of `dir` below `root`, one component at a time: an existing
 * component must be a directory and no symlink, a new one gets `mode`
 * (umask applied) and is checked again after creation.
 */
export async function mkdirBelow(root: string, dir: string, mode: number): Promise<void> {
  if (mode > 0o777) throw new BackupError(`directory mode ${mode.toString(8)} above 0777`, ReturnCode.unsupportedConfigurationParameter);
  const rootStat = await lstat(root).catch(() => undefined);
  if (!rootStat?.isDirectory()) throw new BackupError(`${root} is not an existing directory`, ReturnCode.cannotCreateDirectory);
  if (!isBelow(root, dir)) throw new BackupError(`${dir} is not below ${root}`, ReturnCode.directoryNotAllowed);
  let cur = path.resolve(root);
  for (const part of path.relative(cur, path.resolve(dir)).split(path.sep)) {
    cur = path.join(cur, part);
    try {
      await mkdir(cur, { mode });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const st = await lstat(cur);
    if (st.isSymbolicLink()) throw symlinkError(cur);
    if (!st.isDirectory()) throw new BackupError(`${cur} is not a directory`, ReturnCode.cannotCreateDirectory);
  }
}

/** chmod on a descriptor of the file itself: a symlink put there is refused, its target untouched. */
export async function chmodNoFollow(p: string, mode: number): Promise<void> {
  if (mode > 0o777) throw new BackupError(`mode ${mode.toString(8)} above 0777`, ReturnCode.unsupportedConfigurationParameter);
  const h = await openNoFollow(p);
  try {
    await h.chmod(mode);
  } finally {
    await h.close();
  }
}

/** A regular file opened for reading, never through a symlink, never a FIFO or device. */
export async function openRegularForRead(p: string) {
  return openNoFollow(p, 'file');
}

/** A new file, created exclusively (O_EXCL: fails on anything there, a dangling symlink included) and never followed. */
export async function createExclusive(p: string, mode: number) {
  return open(p, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
}

/**
 * The names in a retain or backup directory, which must all be regular
 * files: a symlink there would have root copy (and hash, and keep) whatever
 * it points to.
 */
export async function listRegularFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const odd = entries.find((e) => !e.isFile());
  if (odd) {
    const what = odd.isSymbolicLink() ? 'a symbolic link' : odd.isDirectory() ? 'a directory' : 'not a regular file';
    throw new BackupError(`${path.join(dir, odd.name)} is ${what}; only regular files are copied`, ReturnCode.symlinkRefused);
  }
  return entries.map((e) => e.name).sort();
}

/**
 * A place for a state file (the guest's whole memory) that nobody else can
 * read or prepare: a fresh 0700 directory with an unpredictable name in
 * `parent` (the RAM disk or retain), and in it the file created exclusively
 * with mode 0600 before libvirt writes into it (libvirt truncates an existing
 * file and keeps its mode). A predictable name in a shared directory would
 * let a local user pre-create it — or a symlink — to read the guest's RAM,
 * have root overwrite another file, or plant a state file to be restored.
 */
export async function createPrivateStateFile(parent: string, fileName: string): Promise<{ dir: string; file: string; remove: () => Promise<void> }> {
  if (path.basename(fileName) !== fileName || fileName === '.' || fileName === '..') throw new BackupError(`${fileName} is not a file name`, ReturnCode.unsafeName);
  const st = await lstat(parent);
  if (st.isSymbolicLink() || !st.isDirectory()) throw new BackupError(`${parent} is not a directory`, ReturnCode.ramDiskNotValid);
  const dir = await mkdtemp(path.join(parent, '.stoney-state-')); // 0700, random suffix
  const file = path.join(dir, fileName);
  const h = await createExclusive(file, 0o600);
  await h.close();
  return { dir, file, remove: () => rm(dir, { recursive: true, force: true }) };
}
