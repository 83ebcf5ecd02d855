import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startsWithPlaceholder } from '../../src/node/stateFile.js';
import { NO_STATE_MARKER } from '../../src/domain/layout.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'stoney-state-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('startsWithPlaceholder', () => {
  it('recognises the original placeholder, with or without the newline', async () => {
    await writeFile(path.join(dir, 'a'), `${NO_STATE_MARKER}\n`);
    await writeFile(path.join(dir, 'b'), NO_STATE_MARKER);
    expect(await startsWithPlaceholder(path.join(dir, 'a'))).toBe(true);
    expect(await startsWithPlaceholder(path.join(dir, 'b'))).toBe(true);
  });

  it('says no for a real state file, a short file and an empty one', async () => {
    await writeFile(path.join(dir, 'c'), Buffer.from('LibvirtQemudSave\0\0\0\0'));
    await writeFile(path.join(dir, 'd'), NO_STATE_MARKER.slice(0, 10));
    await writeFile(path.join(dir, 'e'), '');
    for (const f of ['c', 'd', 'e']) expect(await startsWithPlaceholder(path.join(dir, f))).toBe(false);
  });

  it('reads only the head of a state file larger than a string can hold (3 GiB, sparse)', async () => {
    const big = path.join(dir, 'big.state');
    const f = await open(big, 'w');
    await f.write(Buffer.from('LibvirtQemudSave'), 0, 16, 0);
    await f.truncate(3 * 1024 ** 3);
    await f.close();
    expect(await startsWithPlaceholder(big)).toBe(false);
  });

  it('fails on a missing file', async () => {
    await expect(startsWithPlaceholder(path.join(dir, 'missing'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
