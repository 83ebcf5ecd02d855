import { execFileSync } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chownByName, resolveIds } from '../../src/hypervisor/ownership.js';
import { assertNoSymlinkBelow, chmodNoFollow, createPrivateStateFile, listRegularFiles, mkdirBelow, openRegularForRead } from '../../src/node/safeFs.js';
import { moveFile, writeFileDurably } from '../../src/node/durableFs.js';
import { BackupError } from '../../src/domain/errors.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

/**
 * Reproductions 2 and 7 of issue #10 on a real filesystem (as root): a member
 * of the image group puts a symlink where root is about to chown, chmod,
 * create, copy or move. `outside` plays /etc: it must never change.
 */
let dir: string;
let root: string;
let outside: string;
let secret: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'stoney-safefs-'));
  root = path.join(dir, 'root');
  outside = path.join(dir, 'etc');
  secret = path.join(outside, 'shadow');
  await mkdir(root);
  await mkdir(outside);
  await writeFile(secret, 'root:$6$secret\n', { mode: 0o600 });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function outsideSnapshot(): Promise<string> {
  const lines: string[] = [];
  for (const n of (await readdir(outside)).sort()) {
    const s = await lstat(path.join(outside, n));
    lines.push(`${n} ${s.uid}:${s.gid} ${s.mode.toString(8)} ${s.size} ${s.mtimeMs}`);
  }
  return `${lines.join('\n')}\n${await readFile(secret, 'utf8')}`;
}

async function codeOf(p: Promise<unknown>): Promise<number | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    if (!(err instanceof BackupError)) throw err;
    return err.code;
  }
}

let n = 0;
const fresh = () => path.join(root, `f${++n}`);

describe('ownership and modes on descriptors opened with O_NOFOLLOW', () => {
  it('chowns a regular file by name', async () => {
    const f = fresh();
    await writeFile(f, 'x');
    await chownByName(f, 'nobody', 'vm-storage');
    const ids = await resolveIds('nobody', 'vm-storage');
    expect(await stat(f)).toMatchObject({ uid: ids.uid, gid: ids.gid });
  });

  it('refuses an overlay swapped for a symlink to /etc/shadow between create and chown, leaving the target alone', async () => {
    const before = await outsideSnapshot();
    const overlay = fresh();
    await writeFile(overlay, 'overlay');
    await rm(overlay);
    await symlink(secret, overlay);
    expect(await codeOf(chownByName(overlay, 'nobody', 'vm-storage'))).toBe(ReturnCode.symlinkRefused);
    expect(await codeOf(chmodNoFollow(overlay, 0o666))).toBe(ReturnCode.symlinkRefused);
    expect(await outsideSnapshot()).toBe(before);
  });

  it('refuses a FIFO without blocking', async () => {
    const fifo = fresh();
    execFileSync('mkfifo', [fifo]);
    expect(await codeOf(chownByName(fifo, 'root', 'root'))).toBe(ReturnCode.symlinkRefused);
    expect(await codeOf(openRegularForRead(fifo))).toBe(ReturnCode.symlinkRefused);
  });

  it('refuses unknown users (19) and names that are options or paths (39)', async () => {
    expect(await codeOf(resolveIds('no-such-user-xyz', 'root'))).toBe(ReturnCode.cannotSetImageOwnership);
    expect(await codeOf(resolveIds('root', 'no-such-group-xyz'))).toBe(ReturnCode.cannotSetImageOwnership);
    expect(await codeOf(resolveIds('--help', 'root'))).toBe(ReturnCode.unsupportedConfigurationParameter);
    expect(await codeOf(resolveIds('root', '../etc'))).toBe(ReturnCode.unsupportedConfigurationParameter);
  });

  it('chmods a regular file and refuses modes above 0777', async () => {
    const f = fresh();
    await writeFile(f, 'x');
    await chmodNoFollow(f, 0o640);
    expect((await stat(f)).mode & 0o7777).toBe(0o640);
    expect(await codeOf(chmodNoFollow(f, 0o4755))).toBe(ReturnCode.unsupportedConfigurationParameter);
    expect((await stat(f)).mode & 0o7777).toBe(0o640);
  });
});

describe('directories below a root', () => {
  it('creates each missing component with the mode', async () => {
    const d = path.join(root, 'vm-persistent', 'pool', 'vm', 'leaf');
    await mkdirBelow(root, d, 0o750);
    for (const p of ['vm-persistent', 'vm-persistent/pool', 'vm-persistent/pool/vm', 'vm-persistent/pool/vm/leaf']) {
      const s = await lstat(path.join(root, p));
      expect({ dir: s.isDirectory(), mode: s.mode & 0o777 }).toEqual({ dir: true, mode: 0o750 & ~process.umask() });
    }
  });

  it('refuses a symlinked component and creates nothing through it', async () => {
    const before = await outsideSnapshot();
    await mkdir(path.join(root, 'vm-dynamic'));
    await symlink(outside, path.join(root, 'vm-dynamic', 'pool'));
    expect(await codeOf(mkdirBelow(root, path.join(root, 'vm-dynamic', 'pool', 'vm', 'leaf'), 0o750))).toBe(ReturnCode.symlinkRefused);
    expect(await codeOf(assertNoSymlinkBelow(root, path.join(root, 'vm-dynamic', 'pool', 'vm'), 'directory'))).toBe(ReturnCode.symlinkRefused);
    expect(await outsideSnapshot()).toBe(before);
  });

  it('refuses a directory outside the root (60)', async () => {
    expect(await codeOf(mkdirBelow(root, path.join(root, '..', 'elsewhere'), 0o750))).toBe(ReturnCode.directoryNotAllowed);
    expect(await codeOf(mkdirBelow(root, root, 0o750))).toBe(ReturnCode.directoryNotAllowed);
  });

  it('refuses a file below the root that is a symlink', async () => {
    const f = path.join(root, 'link.xml');
    await symlink(secret, f);
    expect(await codeOf(assertNoSymlinkBelow(root, f, 'file'))).toBe(ReturnCode.symlinkRefused);
  });
});

describe('copying and moving only regular files', () => {
  it('lists a retain or backup directory only when it holds regular files', async () => {
    const d = fresh();
    await mkdir(d);
    await writeFile(path.join(d, 'vm.xml'), 'x');
    expect(await listRegularFiles(d)).toEqual(['vm.xml']);
    await symlink(secret, path.join(d, 'disk.qcow2'));
    expect(await codeOf(listRegularFiles(d))).toBe(ReturnCode.symlinkRefused);
    await rm(path.join(d, 'disk.qcow2'));
    await mkdir(path.join(d, 'sub'));
    expect(await codeOf(listRegularFiles(d))).toBe(ReturnCode.symlinkRefused);
  });

  it('never moves a symlink (its target would follow it into the backup)', async () => {
    const before = await outsideSnapshot();
    const link = fresh();
    await symlink(secret, link);
    expect(await codeOf(moveFile(link, fresh()))).toBe(ReturnCode.symlinkRefused);
    expect(await outsideSnapshot()).toBe(before);
  });

  it('writes durably through a planted .partial symlink without touching its target', async () => {
    const before = await outsideSnapshot();
    const f = fresh();
    await symlink(secret, `${f}.partial`);
    await writeFileDurably(f, 'the XML\n', 0o640);
    expect(await readFile(f, 'utf8')).toBe('the XML\n');
    expect((await lstat(f)).isFile()).toBe(true);
    expect(await outsideSnapshot()).toBe(before);
  });
});

describe('a private place for the state file', () => {
  it('is a fresh 0700 directory with an unpredictable name holding an exclusive 0600 file', async () => {
    const ram = fresh();
    await mkdir(ram, { mode: 0o1777 });
    const a = await createPrivateStateFile(ram, 'vm.20261122T050000Z.state');
    const b = await createPrivateStateFile(ram, 'vm.20261122T050000Z.state');
    expect(a.dir).not.toBe(b.dir);
    expect(path.dirname(a.dir)).toBe(ram);
    const d = await lstat(a.dir);
    const f = await lstat(a.file);
    expect({ dir: d.isDirectory(), dirMode: d.mode & 0o7777, file: f.isFile(), fileMode: f.mode & 0o7777, uid: f.uid }).toEqual({ dir: true, dirMode: 0o700, file: true, fileMode: 0o600, uid: 0 });
    await a.remove();
    await b.remove();
    expect(await readdir(ram)).toEqual([]);
  });

  it('refuses a RAM-disk location that is a symlink, and a file name with a path', async () => {
    const link = fresh();
    await symlink(outside, link);
    expect(await codeOf(createPrivateStateFile(link, 'vm.state'))).toBe(ReturnCode.ramDiskNotValid);
    expect(await codeOf(createPrivateStateFile(root, '../vm.state'))).toBe(ReturnCode.unsafeName);
  });
});
