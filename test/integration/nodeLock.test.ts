import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { NodeLock } from '../../src/node/NodeLock.js';
import { BackupError } from '../../src/domain/errors.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'stoney-nodelock-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const p = execa('true');
  await p;
  return p.pid as number;
}

describe('NodeLock', () => {
  it('lets exactly one of two starters racing over a stale pid file take it', async () => {
    const a = new NodeLock(dir, 'node-01');
    const b = new NodeLock(dir, 'node-01');
    await writeFile(a.file, `${await deadPid()}\n`);
    const results = await Promise.allSettled([a.acquire(), b.acquire()]);
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
    const refused = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(refused.reason).toBeInstanceOf(BackupError);
    expect((refused.reason as BackupError).code).toBe(ReturnCode.cannotLockMachine);
    expect((refused.reason as Error).message).toContain(`pid ${process.pid}`);
    await a.release();
    await b.release();
  });

  it('is taken when the pid file names a live process that holds no lock (a reused pid)', async () => {
    const lock = new NodeLock(dir, 'node-01');
    await writeFile(lock.file, '1\n');
    await lock.acquire();
    expect(await readFile(lock.file, 'utf8')).toBe(`${process.pid}\n`);
    await lock.release();
  });

  it('is refused while another process holds it and free as soon as that process is killed', async () => {
    const lock = new NodeLock(dir, 'node-01');
    // Another process takes the lock the way NodeLock does (flock(1) on an inherited descriptor) and stays.
    const script = `const fs = require('node:fs'); const cp = require('node:child_process');
      const fd = fs.openSync(${JSON.stringify(lock.file)}, 'a+');
      const r = cp.spawnSync('flock', ['-x', '-n', '3'], { stdio: ['ignore', 'ignore', 'ignore', fd] });
      console.log(r.status === 0 ? 'locked' : 'refused'); setTimeout(() => {}, 60000);`;
    const holder = execa(process.execPath, ['-e', script], { reject: false });
    await new Promise<void>((resolve) => holder.stdout?.once('data', () => resolve()));
    await expect(lock.acquire()).rejects.toMatchObject({ code: ReturnCode.cannotLockMachine });
    holder.kill('SIGKILL');
    await holder;
    await lock.acquire();
    await lock.release();
    // release leaves the file (never unlinked) and frees the lock for the next one.
    const next = new NodeLock(dir, 'node-01');
    await next.acquire();
    await next.release();
  });
});
