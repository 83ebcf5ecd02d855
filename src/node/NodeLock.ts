import { mkdir, open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { assertSafeName } from '../domain/names.js';

/**
 * One executor of node steps per node and host: a node daemon and a
 * kvmbackup run must not both work on (or "recover") the same leaves. The
 * lock is a file holding the owner's pid; a lock whose pid is gone is stale
 * and taken over.
 */
export class NodeLock {
  private held = false;
  readonly file: string;

  constructor(runDir: string, nodeName: string) {
    this.file = path.join(runDir, `node-${assertSafeName('node name', nodeName)}.lock`);
  }

  async acquire(): Promise<void> {
    await mkdir(path.dirname(this.file), { recursive: true, mode: 0o755 });
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const h = await open(this.file, 'wx', 0o644);
        await h.writeFile(`${process.pid}\n`);
        await h.close();
        this.held = true;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const pid = Number((await readFile(this.file, 'utf8').catch(() => '')).trim());
        if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
          throw new BackupError(`another stoney-backup process (pid ${pid}) runs the node steps of this node (lock ${this.file})`, ReturnCode.cannotLockMachine);
        }
        await rm(this.file, { force: true }); // stale: its owner is gone
      }
    }
    throw new BackupError(`cannot take the node lock ${this.file}`, ReturnCode.cannotLockMachine);
  }

  async release(): Promise<void> {
    if (!this.held) return;
    this.held = false;
    await rm(this.file, { force: true });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
