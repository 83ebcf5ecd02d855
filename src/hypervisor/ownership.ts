import type { Logger } from 'pino';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { run } from './exec.js';
import { openNoFollow } from './openNoFollow.js';

/**
 * Owner and group come from the directory as names (root, vm-storage),
 * resolved through NSS with getent (Node's fs cannot). The change itself is
 * made on a descriptor opened with O_NOFOLLOW: between creating a file and
 * chown-ing it, a member of the image group could swap it for a symlink to
 * /etc/shadow, and chown(1) would follow it.
 */
/**
 * A step sets owners on several files in a row; each getent costs a process
 * (10–20 ms under load). Names found are remembered briefly — long enough for
 * a step, short enough that a changed account is seen at the next one.
 */
const REMEMBER_MS = 10_000;
const known = new Map<string, { id: number; at: number }>();

export async function resolveIds(owner: string, group: string, logger?: Logger): Promise<{ uid: number; gid: number }> {
  const id = async (db: 'passwd' | 'group', name: string): Promise<number> => {
    if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$/.test(name)) throw new BackupError(`${JSON.stringify(name)} is not a user or group name`, ReturnCode.unsupportedConfigurationParameter);
    const remembered = known.get(`${db}:${name}`);
    if (remembered !== undefined && performance.now() - remembered.at < REMEMBER_MS) return remembered.id;
    const r = await run('getent', [db, '--', name], { logger, timeoutMs: 30_000, okExitCodes: [0, 2] });
    const field = r.exitCode === 0 ? r.stdout.split('\n')[0]?.split(':')[2] : undefined;
    if (field === undefined || !/^\d+$/.test(field)) {
      throw new BackupError(`${db === 'passwd' ? 'user' : 'group'} ${name} does not exist on this node`, ReturnCode.cannotSetImageOwnership);
    }
    known.set(`${db}:${name}`, { id: Number(field), at: performance.now() });
    return Number(field);
  };
  const [uid, gid] = await Promise.all([id('passwd', owner), id('group', group)]);
  return { uid, gid };
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
