import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { QemuImg } from '../../src/hypervisor/QemuImg.js';
import { run } from '../../src/hypervisor/exec.js';
import { assertSafeImageHeader } from '../../src/node/imageHeaderCheck.js';
import { BackupError } from '../../src/domain/errors.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

/**
 * Images whose headers were written by someone hostile (a guest writing a
 * qcow2 header into its raw disk, or a writer of backup files): the checks
 * must read them in the definition's format and never open what the header
 * names. The real qemu-img runs under strace (a `qemu-img` first on PATH that
 * execs strace on /usr/bin/qemu-img), and an nbd:// backing points at a
 * listener that counts connections: both see it when a file is opened.
 */
let dir: string;
let roots: string;
let traces: string;
let server: net.Server;
let port = 0;
let connections = 0;
const savedPath = process.env.PATH;
const qemuImg = new QemuImg();

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'stoney-qemuimg-'));
  roots = path.join(dir, 'images');
  traces = path.join(dir, 'traces');
  await mkdir(roots);
  await mkdir(traces);
  const bin = path.join(dir, 'bin');
  await mkdir(bin);
  await writeFile(path.join(bin, 'qemu-img'), `#!/bin/sh\nexec strace -f -qq -e trace=open,openat,connect -o "${traces}/trace.$$" /usr/bin/qemu-img "$@"\n`);
  await chmod(path.join(bin, 'qemu-img'), 0o755);
  process.env.PATH = `${bin}:${savedPath}`;
  server = net.createServer((s) => {
    connections += 1;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as net.AddressInfo).port;
  // The files a hostile header names.
  await writeFile(path.join(dir, 'secret'), Buffer.alloc(1 << 20));
  await writeFile(path.join(dir, 'datafile'), Buffer.alloc(1 << 20));
});
afterAll(async () => {
  process.env.PATH = savedPath;
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

/** Every path any traced qemu-img opened (or connected to) since the last call. */
async function opened(): Promise<string> {
  let out = '';
  for (const f of await readdir(traces)) {
    out += await readFile(path.join(traces, f), 'utf8');
    await rm(path.join(traces, f));
  }
  return out;
}

async function qcow2WithBacking(name: string, backing: string, backingFormat = 'raw'): Promise<string> {
  const p = path.join(roots, name);
  await run('/usr/bin/qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-F', backingFormat, '-b', backing, p, '1M']);
  return p;
}

async function code(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(BackupError);
    return (err as BackupError).code;
  }
  return 0;
}

describe('qemu-img on images with hostile headers', () => {
  it('the probes see it when qemu-img follows a header (plain `qemu-img check` does)', async () => {
    const img = await qcow2WithBacking('probe.qcow2', path.join(dir, 'secret'));
    await opened();
    await run('qemu-img', ['check', '-q', '-f', 'qcow2', img]);
    expect(await opened()).toContain(path.join(dir, 'secret'));
    const nbd = await qcow2WithBacking('probe-nbd.qcow2', `nbd://127.0.0.1:${port}/x`);
    const before = connections;
    await run('qemu-img', ['check', '-q', '-f', 'qcow2', nbd], { okExitCodes: [0, 1] });
    expect(connections).toBeGreaterThan(before);
  });

  it('check and info never open a backing file named in the header', async () => {
    const img = await qcow2WithBacking('evil.qcow2', path.join(dir, 'secret'));
    await opened();
    expect(await qemuImg.check(img, 'qcow2')).toBe('checked');
    expect((await qemuImg.info(img, { format: 'qcow2' })).backingFile).toBe(path.join(dir, 'secret'));
    expect((await qemuImg.info(img, { shared: true })).backingFile).toBe(path.join(dir, 'secret'));
    const trace = await opened();
    expect(trace).toContain('evil.qcow2');
    expect(trace).not.toContain(path.join(dir, 'secret'));
  });

  it('check and info never connect to an nbd:// backing', async () => {
    const img = await qcow2WithBacking('evil-nbd.qcow2', `nbd://127.0.0.1:${port}/x`);
    const before = connections;
    expect(await qemuImg.check(img, 'qcow2')).toBe('checked');
    await qemuImg.info(img, { format: 'qcow2' });
    expect(connections).toBe(before);
    expect(await code(assertSafeImageHeader(qemuImg, img, 'qcow2', [roots]))).toBe(ReturnCode.unsafeImageHeader);
    expect(connections).toBe(before);
  });

  it('a raw guest disk holding a qcow2 header stays raw: nothing it names is opened', async () => {
    const header = await qcow2WithBacking('header.qcow2', path.join(dir, 'secret'));
    const raw = path.join(roots, 'guest.raw');
    await writeFile(raw, Buffer.concat([await readFile(header), Buffer.alloc(1 << 20)]));
    await opened();
    expect(await qemuImg.check(raw, 'raw')).toBe('not checkable');
    await assertSafeImageHeader(qemuImg, raw, 'raw', [roots]);
    expect(await opened()).not.toContain(path.join(dir, 'secret'));
  });

  it('an external data file is refused without being opened', async () => {
    const img = path.join(roots, 'datafile.qcow2');
    await run('/usr/bin/qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${path.join(dir, 'datafile')},data_file_raw=on`, img, '1M']);
    await opened();
    await expect(qemuImg.check(img, 'qcow2')).rejects.toThrow(/external data file/);
    expect(await code(assertSafeImageHeader(qemuImg, img, 'qcow2', [roots]))).toBe(ReturnCode.unsafeImageHeader);
    expect(await opened()).not.toContain(path.join(dir, 'datafile'));
  });

  it.each([
    ['/etc/shadow as backing', () => qcow2WithBacking('shadow.qcow2', '/etc/shadow'), 'qcow2'],
    ['a block device as backing', () => qcow2WithBacking('dev.qcow2', '/dev/sda'), 'qcow2'],
    ['a json: spec as backing', () => qcow2WithBacking('json.qcow2', 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/shadow"}}'), 'qcow2'],
    ['a relative backing that climbs out of the roots', () => qcow2WithBacking('climb.qcow2', '../secret'), 'qcow2'],
    ['a backing in the roots declared as vmdk (extents name other files)', () => qcow2WithBacking('vmdkbacking.qcow2', path.join(roots, 'base.vmdk'), 'vmdk'), 'qcow2'],
    ['a raw file the definition calls qcow2', async () => {
      const p = path.join(roots, 'plain.raw');
      await writeFile(p, Buffer.alloc(1 << 20));
      return p;
    }, 'qcow2'],
    ['a vmdk format (extents name other files)', async () => path.join(roots, 'x.vmdk'), 'vmdk'],
  ])('refuses %s with code 59 before anything opens it', async (_what, make, format) => {
    const img = await make();
    await opened();
    expect(await code(assertSafeImageHeader(qemuImg, img, format, [roots]))).toBe(ReturnCode.unsafeImageHeader);
    const trace = await opened();
    expect(trace).not.toMatch(/"\/etc\/shadow"|"\/dev\/sda"|secret"/);
  });

  it('accepts a linked clone whose template lies in the image roots', async () => {
    const template = path.join(roots, 'template.qcow2');
    await run('/usr/bin/qemu-img', ['create', '-q', '-f', 'qcow2', template, '1M']);
    const clone = await qcow2WithBacking('clone.qcow2', template, 'qcow2');
    await assertSafeImageHeader(qemuImg, clone, 'qcow2', [roots]);
    expect(await qemuImg.check(clone, 'qcow2')).toBe('checked');
  });
});
