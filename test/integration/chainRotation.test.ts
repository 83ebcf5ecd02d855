import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import pino from 'pino';
import { BackupLayout } from '../../src/domain/layout.js';
import { defaultBackupSettings, type BackupSettings } from '../../src/domain/settings.js';
import { QemuImg } from '../../src/hypervisor/QemuImg.js';
import { run } from '../../src/hypervisor/exec.js';
import { storeDiskImage } from '../../src/node/storeDiskImage.js';
import { finishInterruptedRotation, removeIteration } from '../../src/node/rotateChains.js';
import { chainMembers, checkChainMembers } from '../../src/node/materializeChain.js';
import { verifyBackups } from '../../src/node/verifyBackups.js';
import { writeFileDurably } from '../../src/node/durableFs.js';
import { fileDigest, recordedDigest } from '../../src/node/fileDigest.js';
import { readManifestFile } from '../../src/node/backupIterations.js';
import type { StepContext } from '../../src/node/StepContext.js';
import { Virsh } from '../../src/hypervisor/Virsh.js';
import { LIBVIRT_URI } from '../helpers/libvirt.js';

/**
 * Rotation of incremental chains with real qemu-img images and no VM: three
 * backups of one disk (a full one and two incremental ones), then removal of
 * the oldest — whole, and killed (SIGKILL) at every point of its fold. After
 * any kill the kept backups still read exactly their moment, and the next
 * run completes the rotation with consistent manifests.
 */
const L1 = '20261101T010000Z';
const L2 = '20261102T010000Z';
const L3 = '20261103T010000Z';
const LEAVES = [L1, L2, L3];
const DIST = path.resolve('dist/src/node');

let root: string;

beforeAll(async () => {
  await stat(path.join(DIST, 'rotateChains.js')).catch(() => {
    throw new Error('dist/ is missing: run `npm run build` (the test command does) before the integration tests');
  });
  root = await mkdtemp('/var/tmp/stoney-rotation-');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

function settingsFor(base: string): BackupSettings {
  return {
    sourceDn: '(test)',
    ...defaultBackupSettings,
    rootDirectory: path.join(base, 'backup'),
    retainDirectory: path.join(base, 'retain'),
    fullEvery: 7,
    image: { owner: 'root', group: 'root', mode: 0o640 },
    directory: { owner: 'root', group: 'root', mode: 0o750 },
  };
}

function ctxFor(base: string, leaf: string): StepContext {
  const settings = settingsFor(base);
  const layout = new BackupLayout({ rootDirectory: settings.rootDirectory, retainDirectory: settings.retainDirectory, vmType: 'vm-persistent', pool: 'p1', vm: 'rotvm', leaf });
  const logger = pino({ level: 'silent' });
  return { vm: { name: 'rotvm' } as StepContext['vm'], leaf, leafDn: '', settings, layout, directory: undefined as unknown as StepContext['directory'], virsh: new Virsh(LIBVIRT_URI, logger), qemuImg: new QemuImg(logger), imageRoots: [base], logger };
}

/** Three backups of a disk written between them; `expected/<leaf>.qcow2` holds each moment's disk. */
async function buildBackups(base: string): Promise<void> {
  await mkdir(path.join(base, 'expected'), { recursive: true });
  const disk = path.join(base, 'd.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M']);
  await run('qemu-io', ['-c', 'write -P 0xab 0 16M', disk]);
  for (const [i, leaf] of LEAVES.entries()) {
    await run('qemu-io', ['-c', `write -P ${0x11 * (i + 1)} ${i + 1}M 1M`, disk]);
    await copyFile(disk, path.join(base, 'expected', `${leaf}.qcow2`));
    const ctx = ctxFor(base, leaf);
    await mkdir(ctx.layout.backupDir, { recursive: true });
    const final = ctx.layout.backupPath('d.qcow2');
    const entry = await storeDiskImage(ctx, { source: disk, format: 'qcow2', imageFileName: 'd.qcow2', partial: `${final}.partial`, step: 'retain' });
    await rename(`${final}.partial`, final);
    const manifest = { format: 'stoney-backup/1', vm: 'rotvm', leaf, vmType: 'vm-persistent', pool: 'p1', createdAt: new Date().toISOString(), files: [entry] };
    await writeFileDurably(ctx.layout.manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
  }
}

/** The kept backup reads exactly its moment: checked chain, converted, compared with what the disk held. */
async function expectRestorable(base: string, leaf: string): Promise<void> {
  const ctx = ctxFor(base, leaf);
  const members = await chainMembers(ctx, { leaf, name: `d.qcow2.${leaf}` });
  expect(await checkChainMembers(ctx, members)).toEqual([]);
  const out = path.join(base, `restored-${leaf}.qcow2`);
  await rm(out, { force: true });
  await run('qemu-img', ['convert', '-q', '-O', 'qcow2', ctx.layout.backupPath('d.qcow2'), out]);
  const cmp = await run('qemu-img', ['compare', '-q', out, path.join(base, 'expected', `${leaf}.qcow2`)], { okExitCodes: [0, 1] });
  expect(cmp.exitCode, `${leaf} differs from its moment`).toBe(0);
  await rm(out);
}

/** Reads what the image headers say (no manifest involved): the data a restore would get. */
async function expectChainReads(base: string, leaf: string): Promise<void> {
  const image = ctxFor(base, leaf).layout.backupPath('d.qcow2');
  const cmp = await run('qemu-img', ['compare', '-q', image, path.join(base, 'expected', `${leaf}.qcow2`)], { okExitCodes: [0, 1] });
  expect(cmp.exitCode, `${leaf} reads differently`).toBe(0);
}

describe('chains and rotation on real qemu-img images', () => {
  it('stores the first backup whole and the next ones as differences, each reading its moment', async () => {
    const base = path.join(root, 'plain');
    await buildBackups(base);
    const sizes = await Promise.all(LEAVES.map(async (l) => (await stat(ctxFor(base, l).layout.backupPath('d.qcow2'))).size));
    expect(sizes[0]).toBeGreaterThan(16 * 1024 * 1024);
    expect(sizes[1]).toBeLessThan(2 * 1024 * 1024);
    expect(sizes[2]).toBeLessThan(2 * 1024 * 1024);
    for (const l of LEAVES) await expectRestorable(base, l);
    expect(await removeIteration(ctxFor(base, L3), L1)).toBe(true);
    expect((await readdir(path.join(base, 'backup/vm-persistent/p1/rotvm'))).sort()).toEqual([L2, L3]);
    for (const l of [L2, L3]) await expectRestorable(base, l);
    const report = await verifyBackups(ctxFor(base, L3));
    expect(report.map((r) => [r.leaf, r.kind, r.problems])).toEqual([[L2, 'full', []], [L3, 'incremental', []]]);
  });

  it('folds backups whose manifests an earlier version wrote (plain sha256): checked as written, the folded image gets a sha256PerMiB', async () => {
    const base = path.join(root, 'old-manifests');
    await buildBackups(base);
    for (const l of LEAVES) {
      const file = ctxFor(base, l).layout.manifestPath;
      const m = JSON.parse(await readFile(file, 'utf8')) as { files: Record<string, unknown>[] };
      for (const f of m.files) {
        const { sha256 } = await fileDigest(path.join(path.dirname(file), f['name'] as string), 'sha256');
        delete f['sha256PerMiB'];
        f['sha256'] = sha256;
      }
      await writeFileDurably(file, `${JSON.stringify(m, null, 2)}\n`);
    }
    expect((await verifyBackups(ctxFor(base, L3))).map((r) => r.problems)).toEqual([[], [], []]);
    expect(await removeIteration(ctxFor(base, L3), L1)).toBe(true);
    for (const l of [L2, L3]) await expectRestorable(base, l);
    const folded = (await readManifestFile(ctxFor(base, L2).layout.manifestPath, L2)).files[0]!;
    const image = ctxFor(base, L2).layout.backupPath('d.qcow2');
    expect({ sha256: folded.sha256, ...recordedDigest(folded) }).toEqual({ sha256: undefined, ...(await fileDigest(image)) });
    expect((await readManifestFile(ctxFor(base, L3).layout.manifestPath, L3)).files[0]!.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect((await verifyBackups(ctxFor(base, L3))).map((r) => r.problems)).toEqual([[], []]);
  });

  for (const fault of ['fold:before-commit', 'fold:after-commit', 'fold:after-rename', 'fold:after-manifest', 'rotation:before-remove']) {
    it(`a kill at ${fault} leaves every kept backup readable, and the next run completes the rotation`, async () => {
      const base = path.join(root, fault.replace(/[^a-z]/g, '-'));
      await buildBackups(base);
      const script = `
        import pino from 'pino';
        import { BackupLayout } from '${DIST}/../domain/layout.js';
        import { defaultBackupSettings } from '${DIST}/../domain/settings.js';
        import { QemuImg } from '${DIST}/../hypervisor/QemuImg.js';
        import { removeIteration } from '${DIST}/rotateChains.js';
        const settings = ${JSON.stringify(settingsFor(base))};
        const layout = new BackupLayout({ rootDirectory: settings.rootDirectory, retainDirectory: settings.retainDirectory, vmType: 'vm-persistent', pool: 'p1', vm: 'rotvm', leaf: '${L3}' });
        const logger = pino({ level: 'silent' });
        await removeIteration({ settings: { ...defaultBackupSettings, ...settings }, layout, qemuImg: new QemuImg(logger), logger }, '${L1}');
        process.stdout.write('not killed');`;
      const child = await execa('node', ['--input-type=module', '-e', script], { env: { ...process.env, STONEY_TEST_FAULT: fault }, reject: false, cwd: path.resolve('.') });
      expect({ signal: child.signal, out: child.stdout, err: child.stderr }).toEqual({ signal: 'SIGKILL', out: '', err: '' });
      // Before any recovery, the kept backups' images read their moments.
      for (const l of [L2, L3]) await expectChainReads(base, l);
      await finishInterruptedRotation(ctxFor(base, L3));
      expect((await readdir(path.join(base, 'backup/vm-persistent/p1/rotvm'))).sort()).toEqual([L2, L3]);
      for (const l of [L2, L3]) await expectRestorable(base, l);
      const report = await verifyBackups(ctxFor(base, L3));
      expect(report.map((r) => [r.leaf, r.problems])).toEqual([[L2, []], [L3, []]]);
    });
  }
});
