import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { Sha256Worker } from '../../src/node/Sha256Worker.js';
import { StreamDigest } from '../../src/node/fileDigest.js';

const KiB = 1024;
const threads = () => readdirSync('/proc/self/task').length;

// libuv starts its whole thread pool at the first asynchronous fs call; done
// here, that cannot happen between two counts of this process's threads.
beforeAll(async () => {
  await stat('/');
});

/** Random bytes with runs of zeros, like a disk image: 10 MiB + 17 bytes. */
function imageLike(): Buffer {
  const data = randomBytes(10 * 1024 * KiB + 17);
  data.fill(0, 3 * 1024 * KiB, 5 * 1024 * KiB + 5);
  data.fill(0, data.length - 300 * KiB);
  return data;
}

describe('Sha256Worker', () => {
  it('hashes the blocks of a ring in the order given, reusing slots: the same sha256 as node:crypto on this thread', async () => {
    const data = imageLike();
    const slot = 256 * KiB;
    const slots = 4;
    const shared = new SharedArrayBuffer(slots * slot);
    const ring = Buffer.from(shared);
    const hasher = new Sha256Worker(shared);
    try {
      // Up to `slots` blocks in flight, as sparseCopy keeps them; a slot is
      // refilled only once the worker has hashed what was in it.
      const released: Promise<void>[] = Array.from({ length: slots }, () => Promise.resolve());
      for (let i = 0, pos = 0; pos < data.length; i++, pos += slot) {
        const s = i % slots;
        await released[s];
        const n = data.copy(ring, s * slot, pos, Math.min(pos + slot, data.length));
        released[s] = hasher.update(s * slot, s * slot + n);
      }
      expect(await hasher.digest()).toBe(createHash('sha256').update(data).digest('hex'));
    } finally {
      await hasher.close();
    }
  });

  it('gives the sha256 of nothing when nothing was hashed', async () => {
    const hasher = new Sha256Worker(new SharedArrayBuffer(16));
    try {
      expect(await hasher.digest()).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    } finally {
      await hasher.close();
    }
  });

  it('close ends its thread and rejects what is still waiting and anything after', async () => {
    const before = threads();
    const shared = new SharedArrayBuffer(64 * 1024 * KiB);
    const hasher = new Sha256Worker(shared);
    // 64 × 64 MiB to hash: far more than can be done before close.
    const pending = Array.from({ length: 64 }, () => hasher.update(0, shared.byteLength));
    const settled = Promise.allSettled(pending);
    await hasher.close();
    const results = await settled;
    expect(results.some((r) => r.status === 'rejected')).toBe(true);
    for (const r of results) if (r.status === 'rejected') expect(String(r.reason)).toMatch(/sha256 worker is closed/);
    await expect(hasher.update(0, 1)).rejects.toThrow(/sha256 worker is closed/);
    await expect(hasher.digest()).rejects.toThrow(/sha256 worker is closed/);
    expect(threads()).toBe(before);
  });

  it('starts the next hash after each digest, and hashes zeros asked for by count', async () => {
    const shared = new SharedArrayBuffer(64);
    const ring = Buffer.from(shared);
    ring.write('first block');
    const hasher = new Sha256Worker(shared);
    try {
      await hasher.update(0, 11);
      expect(await hasher.digest()).toBe(createHash('sha256').update('first block').digest('hex'));
      hasher.zeros(3 * 1024 * KiB + 5);
      await hasher.update(0, 5);
      expect(await hasher.digest()).toBe(createHash('sha256').update(Buffer.alloc(3 * 1024 * KiB + 5)).update('first').digest('hex'));
    } finally {
      await hasher.close();
    }
  });

  it('a worker that ends underneath (killed from outside, as a crash of its thread) rejects what waits and anything after', async () => {
    const before = threads();
    const shared = new SharedArrayBuffer(64 * 1024 * KiB);
    const hasher = new Sha256Worker(shared);
    try {
      const pending = Array.from({ length: 16 }, () => hasher.update(0, shared.byteLength));
      // Fault injection: the thread goes away without close().
      await (hasher as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
      const results = await Promise.allSettled(pending);
      expect(results.some((r) => r.status === 'rejected')).toBe(true);
      for (const r of results) if (r.status === 'rejected') expect(String(r.reason)).toMatch(/sha256 worker ended/);
      await expect(hasher.digest()).rejects.toThrow(/sha256 worker ended/);
    } finally {
      await hasher.close();
    }
    expect(threads()).toBe(before);
  });
});

describe('StreamDigest on a worker', () => {
  it('leaves no unhandled rejection when the worker is closed before the result is asked for (a copy that failed)', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const shared = new SharedArrayBuffer(1024 * KiB);
      Buffer.from(shared).fill(7);
      const worker = new Sha256Worker(shared);
      const digest = new StreamDigest('sha256PerMiB', worker);
      // One whole MiB of data: its digest is asked of the worker at once.
      // Each block's own promise is handled, as the copy does (it holds the slot until then).
      for (let at = 0; at < 1024 * KiB; at += 256 * KiB) digest.add(at, at + 256 * KiB, false)?.catch(() => undefined);
      await worker.close();
      await new Promise((r) => setTimeout(r, 50));
      expect(unhandled).toEqual([]);
      await expect(digest.result()).rejects.toThrow(/sha256 worker is closed/);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});
