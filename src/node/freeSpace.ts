import { lstat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode, type ReturnCodeValue } from '../domain/returnCodes.js';
import type { Logger } from 'pino';
import { exists } from './durableFs.js';

/**
 * Room a step needs before it writes: a full filesystem found halfway
 * through a copy leaves partial files behind and (on the images'
 * filesystem) can pause every VM of the node. Codes are the original's:
 * 47 not enough disk space, 48 no disk space information, 4 for the RAM disk.
 */
export const SPACE_MARGIN = 1.05;

/** Free bytes for an unprivileged writer on the filesystem of `dir`, or 48. */
export async function freeSpaceOf(dir: string): Promise<number> {
  try {
    const s = await statfs(await nearestExistingDir(dir));
    return s.bavail * s.bsize;
  } catch (err) {
    throw new BackupError(`cannot find out the free space of ${dir}: ${errorMessage(err)}`, ReturnCode.noDiskSpaceInformation, { cause: err });
  }
}

/** Fail with `code` unless the filesystem of `dir` has `SPACE_MARGIN × bytes` free. */
export async function requireFreeSpace(dir: string, bytes: number, what: string, code: ReturnCodeValue = ReturnCode.notEnoughDiskSpace): Promise<void> {
  const needed = Math.ceil(bytes * SPACE_MARGIN);
  const free = await freeSpaceOf(dir);
  if (free < needed) {
    throw new BackupError(`not enough space for ${what} in ${dir}: ${mib(needed)} needed, ${mib(free)} free; nothing was written`, code);
  }
}

/** Whether `err` is requireFreeSpace's (or freeSpaceOf's) refusal: the answer to pass on, not a failure to work around or rename. */
export function isSpaceError(err: unknown): boolean {
  return err instanceof BackupError && (err.code === ReturnCode.notEnoughDiskSpace || err.code === ReturnCode.noDiskSpaceInformation);
}

/** Bytes a sparse-aware copy of the file writes: its allocated blocks, not its apparent size. */
export async function allocatedBytes(file: string): Promise<number> {
  const st = await lstat(file);
  return Math.min(st.size, st.blocks * 512);
}

/**
 * Where the memory state is written first: the RAM disk when it has
 * `SPACE_MARGIN × guest RAM` free, else the VM's retain directory (the seed's
 * two places). Decided before the snapshot touches anything: when neither has
 * room the step fails with 4 (not enough space on the RAM disk; with no RAM
 * disk configured, 47), the VM untouched. A dump that fills the retain
 * directory would fill the images' filesystem and pause every VM of the node.
 */
export async function chooseStateDirectory(
  o: { ramDisk: string | undefined; retainDir: string; memoryBytes: number; vm: string; logger: Logger },
): Promise<{ dir: string; onRamDisk: boolean }> {
  const needed = Math.ceil(o.memoryBytes * SPACE_MARGIN);
  let ramFree: number | undefined;
  if (o.ramDisk !== undefined) {
    if (!(await exists(o.ramDisk))) {
      o.logger.warn({ vm: o.vm, ramDisk: o.ramDisk }, 'RAM disk location does not exist; saving the state into retain');
    } else {
      ramFree = await freeSpaceOf(o.ramDisk);
      if (ramFree >= needed) return { dir: o.ramDisk, onRamDisk: true };
      o.logger.info({ vm: o.vm, ramDisk: o.ramDisk, memoryBytes: o.memoryBytes, ramFree }, 'not enough room on the RAM disk; saving the state into retain');
    }
  }
  const retainFree = await freeSpaceOf(o.retainDir);
  if (retainFree >= needed) return { dir: o.retainDir, onRamDisk: false };
  const onRam = ramFree === undefined ? '' : `the RAM disk ${o.ramDisk} has ${mib(ramFree)} free, `;
  throw new BackupError(
    `not enough space for the memory state of ${o.vm}: ${mib(needed)} needed (${SPACE_MARGIN} × guest RAM), ${onRam}retain ${o.retainDir} has ${mib(retainFree)} free; nothing was written, the VM was not touched`,
    ramFree === undefined ? ReturnCode.notEnoughDiskSpace : ReturnCode.notEnoughSpaceOnRamDisk,
  );
}

/** A directory a step is about to create is not there yet: its filesystem is its nearest existing ancestor's. */
async function nearestExistingDir(dir: string): Promise<string> {
  let d = path.resolve(dir);
  for (;;) {
    const st = await lstat(d).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (st) return d;
    const up = path.dirname(d);
    if (up === d) return d;
    d = up;
  }
}

function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB (${bytes} bytes)`;
}
