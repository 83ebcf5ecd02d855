import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Logger } from 'pino';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { run } from './exec.js';

/**
 * Owner and group come from the directory as names (root, vm-storage),
 * resolved through NSS with getent (Node's fs cannot). The change itself is
 * made on a descriptor opened with O_NOFOLLOW: between creating a file and
 * chown-ing it, a member of the image group could swap it for a symlink to
 * /etc/shadow, and chown(1) would follow it.
 */
export async function resolveIds(owner: string, group: string, logger?: Logger): Promise<{ uid: number; gid: number }> {
  const id = async (db: 'passwd' | 'group', name: string): Promise<number> => {
    if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$/.test(name)) throw new BackupError(`${JSON.stringify(name)} is not a user or group name`, ReturnCode.unsupportedConfigurationParameter);
    const r = await run('getent', [db, '--', name], { logger, timeoutMs: 30_000, okExitCodes: [0, 2] });
    const field = r.exitCode === 0 ? r.stdout.split('\n')[0]?.split(':')[2] : undefined;
    if (field === undefined || !/^\d+$/.test(field)) {
      throw new BackupError(`${db === 'passwd' ? 'user' : 'group'} ${name} does not exist on this node`, ReturnCode.cannotSetImageOwnership);
    }
    return Number(field);
  };
  return { uid: await id('passwd', owner), gid: await id('group', group) };
}

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

export async function chownByName(target: string, owner: string, group: string, logger?: Logger): Promise<void> {
  const { uid, gid } = await resolveIds(owner, group, logger);
  const h = await openNoFollow(target);
  try {
    await h.chown(uid, gid);
  } finally {
    await h.close();
  }
}
