import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';

// Its own module, apart from ownership.ts: the copy (sparseCopy) opens files
// through it, and a process that only copies need not load execa for that.

/** Opens `target` itself (never a symlink's target) without blocking on a FIFO; refuses anything but a file or directory. */
export async function openNoFollow(target: string, kind: 'file' | 'directory' | 'either' = 'either') {
  let h;
  try {
    h = await open(target, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw new BackupError(`${target} is a symbolic link; refusing to follow it`, ReturnCode.symlinkRefused, { cause: err });
    throw err;
  }
  const st = await h.stat();
  const ok = kind === 'file' ? st.isFile() : kind === 'directory' ? st.isDirectory() : st.isFile() || st.isDirectory();
  if (!ok) {
    await h.close();
    throw new BackupError(`${target} is not a regular ${kind === 'either' ? 'file or directory' : kind}`, ReturnCode.symlinkRefused);
  }
  // A hard link is a second name of a file that may live outside the roots (a
  // planted link to /etc/shadow): root would chmod, chown or read that file.
  // Nothing this program makes or copies has more than one link.
  if (st.isFile() && st.nlink > 1) {
    await h.close();
    throw new BackupError(`${target} has ${st.nlink} hard links; refusing a file that may also be another (system) file`, ReturnCode.symlinkRefused);
  }
  return h;
}
