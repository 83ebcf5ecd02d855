import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, readdirSync, statSync } from 'node:fs';
import { mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { exists, mkdirp, moveFile, sameFilesystem, syncDir, writeFileDurably } from '../../src/node/durableFs.js';
import { sparseCopy } from '../../src/node/sparseCopy.js';
import { Sha256Worker } from '../../src/node/Sha256Worker.js';
import { fileDigest } from '../../src/node/fileDigest.js';
import { run } from '../../src/hypervisor/exec.js';
import { freeSpaceOf } from '../../src/node/freeSpace.js';

const MiB = 1024 * 1024;
const threads = () => readdirSync('/proc/self/task').length;

let dir: string;
let n = 0;
const sub = () => path.join(dir, `f${++n}`);

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'stoney-fs-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function sha256(content: Buffer | string = ''): string {
  return createHash('sha256').update(content).digest('hex');
}

/** The per-MiB digest, written out plainly from its definition (fileDigest.ts). */
function sha256PerMiB(content: Buffer): string {
  let lines = '';
  for (let at = 0; at < content.length; at += MiB) lines += `${sha256(content.subarray(at, at + MiB))}  -\n`;
  return sha256(lines);
}

/** What a copy of `content` must report. */
const copied = (content: Buffer) => ({ size: content.length, sha256PerMiB: sha256PerMiB(content) });

/**
 * A sparse file: `head` at 0, a hole of `holeBytes`, `tail` after it, then
 * `trailingHole` more bytes of hole. Returns its path and content.
 */
async function sparseFile(head: Buffer, holeBytes: number, tail: Buffer, trailingHole = 0): Promise<{ file: string; size: number; content: Buffer }> {
  const file = sub();
  const h = await open(file, 'wx');
  try {
    await h.write(head, 0, head.length, 0);
    await h.write(tail, 0, tail.length, head.length + holeBytes);
    const size = head.length + holeBytes + tail.length + trailingHole;
    await h.truncate(size);
    return { file, size, content: Buffer.concat([head, Buffer.alloc(holeBytes), tail, Buffer.alloc(trailingHole)]) };
  } finally {
    await h.close();
  }
}

describe('sparseCopy', () => {
  it('copies a file with a 64 MiB hole in the middle: same content, still sparse, progress to the total', async () => {
    const src = await sparseFile(randomBytes(MiB), 64 * MiB, randomBytes(MiB + 123));
    expect(src.size).toBe(66 * MiB + 123);
    const dst = sub();
    const progress: [number, number][] = [];
    const result = await sparseCopy(src.file, dst, (done, total) => progress.push([done, total]));

    expect(result).toEqual(copied(src.content));
    expect(await fileDigest(src.file)).toEqual(copied(src.content));
    expect(await fileDigest(dst)).toEqual(copied(src.content));

    const st = await stat(dst);
    expect(st.size).toBe(src.size);
    // About 2 MiB of data; the 64 MiB hole must not be allocated.
    expect(st.blocks * 512).toBeLessThan(8 * MiB);
    expect(st.mode & 0o777).toBe(0o600);

    // Progress at the start, every 64 MiB and once at the end, never past the total.
    expect(progress).toEqual([
      [0, src.size],
      [64 * MiB, src.size],
      [src.size, src.size],
    ]);
  });

  it('keeps a hole at the end (the size comes from truncate, not from the last write)', async () => {
    const src = await sparseFile(randomBytes(4096), 3 * MiB, Buffer.from('tail'), 5 * MiB + 7);
    const dst = sub();
    expect(await sparseCopy(src.file, dst)).toEqual(copied(src.content));
    expect((await stat(dst)).size).toBe(src.size);
    expect(await fileDigest(dst)).toEqual(copied(src.content));
  });

  it('copies a block that is zero except for one byte', async () => {
    const block = Buffer.alloc(MiB);
    block[MiB - 1] = 0x5a;
    const file = sub();
    await writeFile(file, Buffer.concat([Buffer.alloc(MiB), block, Buffer.alloc(10)]));
    const dst = sub();
    const r = await sparseCopy(file, dst);
    expect(r).toEqual(copied(await readFile(file)));
    // Buffer.equals: vitest's deep equality walks megabytes byte by byte.
    expect((await readFile(dst)).equals(await readFile(file))).toBe(true);
  });

  it('copies a small file with progress reports at 0 and at its size', async () => {
    const content = Buffer.from('Machine is not runnung, no state file\n');
    const file = sub();
    await writeFile(file, content);
    const dst = sub();
    const progress: [number, number][] = [];
    expect(await sparseCopy(file, dst, (d, t) => progress.push([d, t]))).toEqual(copied(content));
    expect(await readFile(dst)).toEqual(content);
    expect(progress).toEqual([[0, content.length], [content.length, content.length]]);
  });

  it('copies an empty file', async () => {
    const file = sub();
    await writeFile(file, '');
    const dst = sub();
    expect(await sparseCopy(file, dst)).toEqual({ size: 0, sha256PerMiB: sha256() });
    expect((await stat(dst)).size).toBe(0);
  });

  it('refuses an existing destination and leaves it untouched', async () => {
    const file = sub();
    await writeFile(file, 'new content');
    const dst = sub();
    await writeFile(dst, 'precious');
    await expect(sparseCopy(file, dst)).rejects.toMatchObject({ code: 'EEXIST' });
    expect(await readFile(dst, 'utf8')).toBe('precious');
  });

  it('fails on a missing source without creating the destination', async () => {
    const dst = sub();
    await expect(sparseCopy(path.join(dir, 'no-such-file'), dst)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(existsSync(dst)).toBe(false);
  });

  it('stops when the signal aborts', async () => {
    const src = await sparseFile(randomBytes(MiB), 64 * MiB, randomBytes(MiB + 123));
    const dst = sub();
    const ac = new AbortController();
    const progress: number[] = [];
    await expect(
      sparseCopy(
        src.file,
        dst,
        (done) => {
          progress.push(done);
          if (done > 0) ac.abort();
        },
        ac.signal,
      ),
    ).rejects.toMatchObject({ name: 'AbortError' });
    expect(progress).toEqual([0, 64 * MiB]);
    // Stopped before the end, and what was written is removed again.
    expect(existsSync(dst)).toBe(false);
  });

  it('copies a large file: data, zero blocks and holes at odd offsets, same bytes and digest, holes kept, no thread left', async () => {
    const before = threads();
    const content = randomBytes(80 * MiB + 4097);
    content.fill(0, 5 * MiB, 45 * MiB + 3); // zeros, partly written in the source
    content.fill(0, 79 * MiB); // and a tail of zeros
    const file = sub();
    const h = await open(file, 'wx');
    try {
      // The source has real holes too: only the non-zero parts are written.
      await h.write(content, 0, 6 * MiB, 0);
      await h.write(content, 45 * MiB + 3, 34 * MiB - 3, 45 * MiB + 3);
      await h.truncate(content.length);
    } finally {
      await h.close();
    }
    const dst = sub();
    expect(await sparseCopy(file, dst)).toEqual(copied(content));
    expect((await readFile(dst)).equals(content)).toBe(true);
    // 39 MiB of data (and the blocks around its edges); the 40 MiB of zeros are holes in the copy.
    expect((await stat(dst)).blocks * 512).toBeLessThan(48 * MiB);
    expect(threads()).toBe(before);
  });

  it('fails on a source that grows while it is copied, and removes the copy', async () => {
    const file = sub();
    await writeFile(file, randomBytes(3 * MiB));
    const dst = sub();
    // Written to at the copy's first report, as a guest or another writer would.
    const grow = (done: number) => void (done === 0 && appendFileSync(file, 'more'));
    await expect(sparseCopy(file, dst, grow)).rejects.toThrow(/changed size while being copied \(3145728 bytes when it started, 3145732 now\)/);
    expect(existsSync(dst)).toBe(false);
  });

  it('copies with the plain sha256 when asked (what older manifests record)', async () => {
    const content = Buffer.concat([randomBytes(MiB + 5), Buffer.alloc(2 * MiB), randomBytes(77)]);
    const file = sub();
    await writeFile(file, content);
    expect(await sparseCopy(file, sub(), undefined, undefined, 'sha256')).toEqual({ size: content.length, sha256: sha256(content) });
  });

  it('hashes a copy that starts while another hashes on the main thread on a worker thread of its own: both right, no thread left', async () => {
    const before = threads();
    const a = Buffer.concat([randomBytes(70 * MiB), Buffer.alloc(3 * MiB), randomBytes(11)]);
    const b = Buffer.concat([Buffer.alloc(MiB), randomBytes(69 * MiB + 3)]);
    const fa = sub();
    const fb = sub();
    await writeFile(fa, a);
    await writeFile(fb, b);
    let most = 0;
    const watch = () => void (most = Math.max(most, threads()));
    // The second starts at the first's first report: the first hashes on the main thread by then.
    let second: Promise<unknown> | undefined;
    const ra = await sparseCopy(fa, sub(), () => void (second ??= sparseCopy(fb, sub(), watch, undefined, 'sha256')));
    expect(ra).toEqual(copied(a));
    expect(await second).toEqual({ size: b.length, sha256: sha256(b) });
    expect(most).toBe(before + 1);
    expect(threads()).toBe(before);
  });

  it('ends its hashing thread when aborted in the middle of a large file, and removes the copy', async () => {
    const before = threads();
    const first = await sparseFile(randomBytes(70 * MiB), 0, randomBytes(10));
    const src = await sparseFile(randomBytes(70 * MiB), 0, randomBytes(10));
    const dst = sub();
    const ac = new AbortController();
    let most = 0;
    // Started while the first copy hashes on the main thread, it hashes on a worker.
    let second: Promise<unknown> | undefined;
    const onSecond = (done: number) => {
      most = Math.max(most, threads());
      if (done > 0) ac.abort();
    };
    await sparseCopy(first.file, sub(), () => void (second ??= sparseCopy(src.file, dst, onSecond, ac.signal).catch((err: unknown) => err)));
    expect(await second).toMatchObject({ name: 'AbortError' });
    expect(most).toBe(before + 1);
    expect(existsSync(dst)).toBe(false);
    expect(threads()).toBe(before);
  });

  it('reports its own failure, not a hashing worker that fails to end as well', async () => {
    const first = await sparseFile(randomBytes(70 * MiB), 0, randomBytes(10));
    const src = await sparseFile(randomBytes(70 * MiB), 0, randomBytes(10));
    const dst = sub();
    const ac = new AbortController();
    const close = Sha256Worker.prototype.close;
    const spy = vi.spyOn(Sha256Worker.prototype, 'close').mockImplementation(async function (this: Sha256Worker) {
      await close.call(this);
      throw new Error('the worker did not end');
    });
    try {
      let second: Promise<unknown> | undefined;
      const onSecond = (done: number) => void (done > 0 && ac.abort());
      await sparseCopy(first.file, sub(), () => void (second ??= sparseCopy(src.file, dst, onSecond, ac.signal).catch((err: unknown) => err)));
      expect(await second).toMatchObject({ name: 'AbortError' });
      expect(spy).toHaveBeenCalledTimes(1);
      expect(existsSync(dst)).toBe(false);
    } finally {
      spy.mockRestore();
    }
  });

  it('does not copy at all with an already aborted signal', async () => {
    const src = await sparseFile(randomBytes(MiB), MiB, randomBytes(10));
    const dst = sub();
    const progress: number[] = [];
    await expect(sparseCopy(src.file, dst, (d) => progress.push(d), AbortSignal.abort())).rejects.toMatchObject({ name: 'AbortError' });
    expect(progress).toEqual([]);
    expect(existsSync(dst)).toBe(false);
  });
});

describe('fileDigest', () => {
  it('hashes a file both ways', async () => {
    const content = Buffer.concat([randomBytes(3 * MiB + 17), Buffer.alloc(MiB), randomBytes(5)]);
    const file = sub();
    await writeFile(file, content);
    expect(await fileDigest(file)).toEqual(copied(content));
    expect(await fileDigest(file, 'sha256')).toEqual({ size: content.length, sha256: sha256(content) });
  });

  it('hashes an empty file', async () => {
    const file = sub();
    await writeFile(file, '');
    expect(await fileDigest(file)).toEqual({ size: 0, sha256PerMiB: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' });
  });

  it('gives what coreutils give: `split -b 1048576 --filter=sha256sum F | sha256sum`, and `sha256sum F`', async () => {
    // Data, a MiB of written zeros, a hole of 2 MiB and a bit, data across a MiB boundary, a short last piece.
    const src = await sparseFile(Buffer.concat([randomBytes(MiB + 100), Buffer.alloc(MiB)]), 2 * MiB + 300, randomBytes(MiB + 4000), 12345);
    const perMiB = await run('bash', ['-c', 'split -b 1048576 --filter=sha256sum -- "$1" | sha256sum', 'digest', src.file]);
    const whole = await run('sha256sum', ['--', src.file]);
    expect(await fileDigest(src.file)).toEqual({ size: src.size, sha256PerMiB: perMiB.stdout.split(' ')[0] });
    expect(await fileDigest(src.file, 'sha256')).toEqual({ size: src.size, sha256: whole.stdout.split(' ')[0] });
    expect(await sparseCopy(src.file, sub())).toEqual({ size: src.size, sha256PerMiB: perMiB.stdout.split(' ')[0] });
  });
});

describe('writeFileDurably', () => {
  it('writes the content with mode 0640 and leaves no .partial', async () => {
    const d = sub();
    await mkdirp(d, 0o750);
    const file = path.join(d, 'kvm-1.xml');
    await writeFileDurably(file, '<domain/>\n');
    expect(await readFile(file, 'utf8')).toBe('<domain/>\n');
    expect((await stat(file)).mode & 0o777).toBe(0o640 & ~process.umask());
    expect(await readdir(d)).toEqual(['kvm-1.xml']);
  });

  it('writes a Buffer with a given mode', async () => {
    const d = sub();
    await mkdirp(d, 0o750);
    const file = path.join(d, 'state');
    const content = randomBytes(1000);
    await writeFileDurably(file, content, 0o600);
    expect((await readFile(file)).equals(content)).toBe(true);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
  });

  it('replaces an existing file and a leftover .partial from a crash', async () => {
    const d = sub();
    await mkdirp(d, 0o750);
    const file = path.join(d, 'manifest.json');
    await writeFile(file, 'old');
    await writeFile(`${file}.partial`, 'leftover of a crash');
    await writeFileDurably(file, 'new');
    expect(await readFile(file, 'utf8')).toBe('new');
    expect(await readdir(d)).toEqual(['manifest.json']);
  });

  it('fails when the directory does not exist, leaving nothing behind', async () => {
    const file = path.join(dir, 'missing-dir', 'x');
    await expect(writeFileDurably(file, 'x')).rejects.toMatchObject({ code: 'ENOENT' });
    expect(existsSync(path.join(dir, 'missing-dir'))).toBe(false);
  });
});

describe('moveFile', () => {
  it('renames within a filesystem: same inode, source gone', async () => {
    const d = sub();
    await mkdirp(path.join(d, 'a'), 0o700);
    await mkdirp(path.join(d, 'b'), 0o700);
    const src = path.join(d, 'a', 'kvm-1.state');
    const dst = path.join(d, 'b', 'kvm-1.state');
    const content = randomBytes(2 * MiB);
    await writeFile(src, content);
    const ino = (await stat(src)).ino;
    await moveFile(src, dst);
    expect(existsSync(src)).toBe(false);
    expect((await readFile(dst)).equals(content)).toBe(true);
    expect((await stat(dst)).ino).toBe(ino);
    expect(await readdir(path.join(d, 'b'))).toEqual(['kvm-1.state']);
  });

  it('fails on a missing source', async () => {
    await expect(moveFile(path.join(dir, 'nothing-here'), path.join(dir, 'never'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(existsSync(path.join(dir, 'never'))).toBe(false);
  });

  // /dev/shm is a tmpfs (a RAM disk, like sstBackupRamDiskLocation) on most Linux hosts.
  const shmOtherFs = existsSync('/dev/shm') && statSync('/dev/shm').dev !== statSync(os.tmpdir()).dev;
  it.skipIf(!shmOtherFs)('copies across filesystems (RAM disk → disk): content kept, source and .partial gone', async () => {
    const ram = await mkdtemp(path.join('/dev/shm', 'stoney-fs-'));
    try {
      const src = path.join(ram, 'kvm-1.state');
      const content = Buffer.concat([randomBytes(MiB), Buffer.alloc(2 * MiB), randomBytes(5)]);
      await writeFile(src, content);
      const d = sub();
      await mkdirp(d, 0o700);
      const dst = path.join(d, 'kvm-1.state');
      await moveFile(src, dst);
      expect(existsSync(src)).toBe(false);
      expect((await readFile(dst)).equals(content)).toBe(true);
      expect(await readdir(d)).toEqual(['kvm-1.state']);
      expect(await sameFilesystem(ram, d)).toBe(false);
    } finally {
      await rm(ram, { recursive: true, force: true });
    }
  });
});

describe('small helpers', () => {
  it('exists says whether a path exists', async () => {
    expect(await exists(dir)).toBe(true);
    expect(await exists(path.join(dir, 'nope'))).toBe(false);
  });

  it('sameFilesystem compares devices', async () => {
    const d = sub();
    await mkdirp(d, 0o700);
    expect(await sameFilesystem(dir, d)).toBe(true);
  });

  it('freeSpaceOf reports a positive amount, also for a directory not made yet', async () => {
    expect(await freeSpaceOf(dir)).toBeGreaterThan(0);
    expect(await freeSpaceOf(path.join(dir, 'not', 'yet'))).toBeGreaterThan(0);
  });

  it('mkdirp creates nested directories with the mode and accepts existing ones', async () => {
    const d = path.join(sub(), 'x', 'y');
    await mkdirp(d, 0o750);
    await mkdirp(d, 0o750);
    expect((await stat(d)).isDirectory()).toBe(true);
    expect((await stat(d)).mode & 0o777).toBe(0o750 & ~process.umask());
    await syncDir(d);
  });
});
