import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { run } from '../../src/hypervisor/exec.js';
import { copyChangedClusters } from '../../src/hypervisor/copyChangedClusters.js';
import { QemuImg } from '../../src/hypervisor/QemuImg.js';

/**
 * The bitmap-driven copy on the real qemu-storage-daemon: an image whose
 * persistent bitmap recorded a few writes (qemu-io, like a guest, writes
 * through QEMU's block layer, which records them), copied as the changes
 * over a whole copy of its earlier state, must read back exactly as the
 * image — zeros written over data included — and hold only what changed.
 */
const MiB = 1024 * 1024;
let dir: string;
const qemuImg = new QemuImg();
const io = (image: string, cmd: string) => run('qemu-io', ['-f', 'qcow2', '-c', cmd, image]);

async function image(name: string): Promise<{ live: string; previous: string; incremental: string }> {
  const live = path.join(dir, `${name}.qcow2`);
  const previous = path.join(dir, `${name}.previous.qcow2`);
  const incremental = path.join(dir, `${name}.inc.qcow2`);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', live, '64M']);
  await io(live, 'write -P 0xab 0 8M');
  await io(live, 'write -P 0xcd 32M 4M');
  await copyFile(live, previous); // the earlier backup: the image as it was
  await run('qemu-img', ['bitmap', '--add', live, 'since-previous']);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', path.basename(previous), incremental]);
  return { live, previous, incremental };
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'stoney-changes-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('copyChangedClusters', () => {
  it('stores exactly what the bitmap marks, and the result over its backing reads as the image', async () => {
    const { live, previous, incremental } = await image('a');
    await io(live, 'write -P 0x11 2M 1M');
    await io(live, 'write -z 32M 512K'); // zeros over earlier data must not read as that data
    await io(live, 'write -P 0x22 48M 64K');
    const progress: number[] = [];
    const r = await copyChangedClusters({ source: live, bitmap: 'since-previous', target: incremental, targetBacking: [previous], onProgress: (d) => progress.push(d), pollMs: 20 });
    expect(r.bytes).toBe(1 * MiB + 512 * 1024 + 64 * 1024);
    await run('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', live, incremental]);
    const map = JSON.parse((await run('qemu-img', ['map', '--output=json', '-f', 'qcow2', incremental])).stdout) as { start: number; length: number; depth: number; data: boolean; zero: boolean }[];
    const own = map.filter((e) => e.depth === 0 && (e.data || e.zero));
    expect(own.map((e) => [e.start, e.length, e.data])).toEqual([
      [2 * MiB, 1 * MiB, true],
      [32 * MiB, 512 * 1024, false],
      [48 * MiB, 64 * 1024, true],
    ]);
    const header = await qemuImg.info(incremental, { format: 'qcow2' });
    expect(header.backingName).toBe(path.basename(previous));
  });

  it('tells beforeCopy the most it can write (marked clusters, rounded up to 64 KiB ones); a refusal there writes nothing', async () => {
    const { live, previous, incremental } = await image('e');
    // A bitmap of 4 KiB granularity: four scattered 4 KiB writes mark 16 KiB, but fill four 64 KiB clusters of the target.
    await run('qemu-img', ['bitmap', '--add', '-g', '4096', live, 'fine']);
    for (const at of ['1M', '9M', '17M', '25M']) await io(live, `write -P 0x55 ${at} 4K`);
    const told: Record<string, number> = {};
    for (const bitmap of ['since-previous', 'fine']) {
      await expect(copyChangedClusters({ source: live, bitmap, target: incremental, targetBacking: [previous], beforeCopy: async (bytes) => {
        told[bitmap] = bytes;
        throw new Error('no room');
      } })).rejects.toThrow('no room');
    }
    expect(told).toEqual({ 'since-previous': 4 * 64 * 1024, fine: 4 * 64 * 1024 });
    const map = JSON.parse((await run('qemu-img', ['map', '--output=json', '-f', 'qcow2', incremental])).stdout) as { depth: number; data: boolean; zero: boolean }[];
    expect(map.filter((e) => e.depth === 0 && (e.data || e.zero))).toEqual([]);
    const ps = await run('pgrep', ['-f', `qemu-storage-daemon.*${dir}`], { okExitCodes: [0, 1] });
    expect(ps.stdout.trim()).toBe('');
    // Allowed, the copy writes the four clusters.
    const r = await copyChangedClusters({ source: live, bitmap: 'fine', target: incremental, targetBacking: [previous], beforeCopy: async () => undefined });
    expect(r.bytes).toBeGreaterThan(0);
    await run('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', live, incremental]);
  });

  it('fails clearly for a bitmap the image does not have, leaving no process behind', async () => {
    const { live, previous, incremental } = await image('b');
    await expect(copyChangedClusters({ source: live, bitmap: 'no-such-bitmap', target: incremental, targetBacking: [previous] })).rejects.toThrow(/no-such-bitmap/);
    const ps = await run('pgrep', ['-f', `qemu-storage-daemon.*${dir}`], { okExitCodes: [0, 1] });
    expect(ps.stdout.trim()).toBe('');
  });

  it('ends the daemon when cancelled', async () => {
    const { live, previous, incremental } = await image('c');
    await io(live, 'write -P 0x33 0 64M');
    const ac = new AbortController();
    ac.abort();
    await expect(copyChangedClusters({ source: live, bitmap: 'since-previous', target: incremental, targetBacking: [previous], signal: ac.signal })).rejects.toThrow();
    const ps = await run('pgrep', ['-f', `qemu-storage-daemon.*${dir}`], { okExitCodes: [0, 1] });
    expect(ps.stdout.trim()).toBe('');
  });
});

describe('copyChangedClusters when its process dies', () => {
  it('takes qemu-storage-daemon with it (the daemon ignores the end of its stdin); the limit holds the copy back', async () => {
    const { live, previous, incremental } = await image('d');
    const module = path.resolve('dist/src/hypervisor/copyChangedClusters.js');
    await io(live, 'write -P 0x44 0 64M');
    // A stand-in for the node daemon: a copy of 64 MiB limited to 1 MiB/s, killed while it runs.
    const script = `const { copyChangedClusters } = await import(${JSON.stringify(module)});
await copyChangedClusters({ source: ${JSON.stringify(live)}, bitmap: 'since-previous', target: ${JSON.stringify(incremental)}, targetBacking: [${JSON.stringify(previous)}], speedBytesPerSecond: 1048576 });
await new Promise(() => setInterval(() => undefined, 1000));`;
    const { execa } = await import('execa');
    const child = execa(process.execPath, ['--input-type=module', '-e', script], { reject: false });
    const daemon = async () => (await run('pgrep', ['-f', `qemu-storage-daemon.*${path.basename(incremental)}`], { okExitCodes: [0, 1] })).stdout.trim();
    for (let i = 0; i < 100 && (await daemon()) === ''; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await daemon()).not.toBe('');
    child.kill('SIGKILL');
    await child;
    for (let i = 0; i < 40 && (await daemon()) !== ''; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await daemon()).toBe('');
  });
});
