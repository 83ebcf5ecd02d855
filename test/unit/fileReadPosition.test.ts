import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, open, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileReadPosition } from '../../src/hypervisor/fileReadPosition.js';

/** The restore's progress measure, on descriptors of this very process (/proc is real and cheap). */
let dir: string;
let file: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'stoney-readpos-'));
  file = path.join(dir, 'x.state');
  await writeFile(file, Buffer.alloc(64 * 1024, 7));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('fileReadPosition', () => {
  it('is undefined while nobody has the file open', async () => {
    expect(await fileReadPosition(file)).toBeUndefined();
  });

  it('is the furthest offset of the open descriptors, found through a symlinked path too', async () => {
    const a = await open(file, 'r');
    const b = await open(file, 'r');
    try {
      await a.read(Buffer.alloc(1000), 0, 1000, null);
      await b.read(Buffer.alloc(5000), 0, 5000, null);
      expect(await fileReadPosition(file)).toBe(5000);
      await a.read(Buffer.alloc(9000), 0, 9000, null);
      expect(await fileReadPosition(file)).toBe(10000);
      const link = path.join(dir, 'link.state');
      await symlink(file, link);
      expect(await fileReadPosition(link)).toBe(10000);
    } finally {
      await a.close();
      await b.close();
    }
    expect(await fileReadPosition(file)).toBeUndefined();
  });
});
