import { constants } from 'node:fs';
import { mkdir, open, readFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { assertSafeName } from '../domain/names.js';
import { tryFlockExclusive } from '../hypervisor/flock.js';

/**
 * One executor of node steps per node and host: a node daemon and a
 * kvmbackup run must not both work on (or "recover") the same leaves.
 *
 * The lock is an flock(2) on the lock file, held as long as our descriptor is
 * open: the kernel drops it when the holder dies, so there is no stale lock to
 * judge and no race between two starters that both found a dead owner's pid
 * (the pid-file design let both take it). The pid written into the file is
 * only for the message. The file is never removed: unlinking a locked file
 * would let a third starter lock a new file of the same name beside the
 * holder of the old one.
 */
export class NodeLock {
  private handle: FileHandle | undefined;
  readonly file: string;

  constructor(runDir: string, nodeName: string) {
    this.file = path.join(runDir, `node-${assertSafeName('node name', nodeName)}.lock`);
  }

  async acquire(): Promise<void> {
    if (this.handle) return;
    await mkdir(path.dirname(this.file), { recursive: true, mode: 0o755 });
    // No O_TRUNC: the holder's pid must stay readable for the message below.
    const h = await open(this.file, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o644);
    let taken = false;
    try {
      taken = await tryFlockExclusive(h.fd);
    } finally {
      if (!taken) await h.close();
    }
    if (!taken) {
      const pid = (await readFile(this.file, 'utf8').catch(() => '')).trim();
      throw new BackupError(`another stoney-backup process (pid ${/^\d+$/.test(pid) ? pid : 'unknown'}) runs the node steps of this node (lock ${this.file})`, ReturnCode.cannotLockMachine);
    }
    await h.truncate(0);
    await h.write(`${process.pid}\n`, 0);
    this.handle = h;
  }

  async release(): Promise<void> {
    const h = this.handle;
    if (!h) return;
    this.handle = undefined;
    await h.truncate(0).catch(() => undefined);
    await h.close(); // drops the flock
  }
}
