import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { sparseCopy } from '../../src/node/sparseCopy.js';
import { moveFile } from '../../src/node/durableFs.js';

/** A copy that runs out of room leaves nothing behind: a real 1 MiB tmpfs, a 3 MiB file (and a 70 MiB one). */
let work: string;
let small: string;
beforeEach(async () => {
  work = await mkdtemp(path.join('/var/tmp', 'stoney-enospc-'));
  small = path.join(work, 'small');
  execFileSync('mkdir', [small]);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'stoney-enospc', small]);
  await writeFile(path.join(work, 'src'), randomBytes(3 * 1024 * 1024));
});
afterEach(async () => {
  execFileSync('umount', [small]);
  await rm(work, { recursive: true, force: true });
});

describe('a copy into a full filesystem', () => {
  it('sparseCopy fails with ENOSPC and removes what it wrote', async () => {
    await expect(sparseCopy(path.join(work, 'src'), path.join(small, 'dst'))).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(await readdir(small)).toEqual([]);
  });

  it('sparseCopy of a large file (hashed on a worker thread) fails with ENOSPC, removes what it wrote and ends the thread', async () => {
    const big = path.join(work, 'big');
    await writeFile(big, randomBytes(70 * 1024 * 1024));
    const before = readdirSync('/proc/self/task').length;
    await expect(sparseCopy(big, path.join(small, 'dst'))).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(await readdir(small)).toEqual([]);
    expect(readdirSync('/proc/self/task').length).toBe(before);
  });

  it('moveFile across filesystems fails, leaves no .partial and keeps the source', async () => {
    await expect(moveFile(path.join(work, 'src'), path.join(small, 'dst'))).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(await readdir(small)).toEqual([]);
    expect((await readdir(work)).sort()).toEqual(['small', 'src']);
  });

  it('sparseCopy never removes a file it did not create', async () => {
    await writeFile(path.join(small, 'dst'), 'someone else\'s');
    await expect(sparseCopy(path.join(work, 'src'), path.join(small, 'dst'))).rejects.toMatchObject({ code: 'EEXIST' });
    expect(await readdir(small)).toEqual(['dst']);
  });
});
