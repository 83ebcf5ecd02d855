import { createHash } from 'node:crypto';
import { appendFile, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, type RunResult } from '../../src/hypervisor/exec.js';

/**
 * deploy/install.sh into a temporary prefix and sysconfdir (never the real
 * /opt or /etc): the installed tree is the runtime only, its CLI runs, the
 * units are rewritten to the prefix, and a second run changes nothing at all.
 * Each run builds for real (npm ci and tsc), hence the long timeouts.
 */
const SCRIPT = path.resolve('deploy/install.sh');
const BUILD_TIMEOUT_MS = 600_000;

/** Every entry below `root`: type, mode, size, mtime and, for files, the content's hash (a snapshot to compare runs). */
async function treeSnapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (dir: string): Promise<void> => {
    for (const name of (await readdir(dir)).sort()) {
      const p = path.join(dir, name);
      const s = await lstat(p);
      const rel = path.relative(root, p);
      if (s.isDirectory()) {
        out[rel] = `dir ${s.mode.toString(8)} ${s.mtimeMs}`;
        await walk(p);
      } else if (s.isSymbolicLink()) {
        out[rel] = `link ${await readlink(p)}`;
      } else {
        out[rel] = `file ${s.mode.toString(8)} ${s.size} ${s.mtimeMs} ${createHash('sha256').update(await readFile(p)).digest('hex')}`;
      }
    }
  };
  await walk(root);
  return out;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

describe('deploy/install.sh', () => {
  let tmp: string;
  let prefix: string;
  let etc: string;
  let scratchTmp: string;
  let first: RunResult;
  const install = (...args: string[]) =>
    run('bash', [SCRIPT, '--prefix', prefix, '--sysconfdir', etc, '--no-systemd', ...args], { timeoutMs: BUILD_TIMEOUT_MS, okExitCodes: [0, 1, 2], env: { TMPDIR: scratchTmp } });

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'stoney-install-'));
    // Not …/opt/stoney-backup nor …/etc: the units must show no default path left over.
    prefix = path.join(tmp, 'apps', 'sb');
    etc = path.join(tmp, 'conf');
    scratchTmp = path.join(tmp, 'scratch');
    await mkdir(scratchTmp);
    first = await install();
  }, BUILD_TIMEOUT_MS);

  afterAll(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('installs, says what it installed and leaves no temporary directory behind', async () => {
    expect(first.exitCode, first.stderr).toBe(0);
    expect(first.stdout).toContain(`installed ${prefix}/dist/`);
    expect(first.stdout).toContain(`installed ${etc}/stoney-backup/stoney-backup.env\n`);
    expect(await readdir(scratchTmp)).toEqual([]);
    expect(await readdir(path.dirname(prefix))).toEqual(['sb']);
  });

  it('ships the compiled runtime only: no sources, source maps, tests or dev tooling', async () => {
    expect((await readdir(prefix)).sort()).toEqual(
      ['.stoney-backup-install', 'README.md', 'bin', 'deploy', 'dist', 'docs', 'ldif', 'node_modules', 'package-lock.json', 'package.json'],
    );
    expect((await readdir(path.join(prefix, 'dist'))).sort()).toEqual(['src', 'workflows']);
    for (const f of ['bin/stoney-backup.js', 'dist/src/cli/main.js', 'dist/workflows/backupMachine.js', 'ldif/stoney-backup-schema.ldif', 'ldif/acl-example.ldif', 'docs/restore-runbook.md']) {
      expect(await exists(path.join(prefix, f)), f).toBe(true);
    }
    const snap = await treeSnapshot(path.join(prefix, 'dist'));
    expect(Object.keys(snap).filter((f) => snap[f]?.startsWith('file') && !f.endsWith('.js'))).toEqual([]);
    expect((await stat(path.join(prefix, 'bin/stoney-backup.js'))).mode & 0o777).toBe(0o755);
  });

  it('node_modules holds the dependencies and none of the devDependencies', async () => {
    const pkg = JSON.parse(await readFile(path.join(prefix, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
    for (const dep of Object.keys(pkg.dependencies)) expect(await exists(path.join(prefix, 'node_modules', dep)), dep).toBe(true);
    for (const dep of [...Object.keys(pkg.devDependencies), 'vitest', 'typescript', 'esbuild', 'vite', 'rollup']) {
      expect(await exists(path.join(prefix, 'node_modules', dep)), dep).toBe(false);
    }
    // npm's record of what it installed: not one package marked dev.
    const hidden = JSON.parse(await readFile(path.join(prefix, 'node_modules/.package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
    expect(Object.entries(hidden.packages).filter(([, p]) => p.dev).map(([name]) => name)).toEqual([]);
  });

  it('the installed CLI runs from the prefix', async () => {
    const help = await run('node', [path.join(prefix, 'bin/stoney-backup.js'), '--help'], { timeoutMs: 60_000 });
    expect(help.stdout).toContain('Usage: stoney-backup COMMAND');
    const version = await run('node', [path.join(prefix, 'bin/stoney-backup.js'), '--version'], { timeoutMs: 60_000 });
    expect(version.stdout.trim()).toMatch(/^stoney-backup \d+\.\d+\.\d+$/);
  });

  it('units and env file name the prefix and sysconfdir; the env file is private', async () => {
    const node = await readFile(path.join(etc, 'systemd/system/stoney-backup-node.service'), 'utf8');
    expect(node).toContain(`ExecStart=/usr/bin/node ${prefix}/bin/stoney-backup.js node --config ${etc}/stoney-backup/stoney-backup.env\n`);
    const control = await readFile(path.join(etc, 'systemd/system/stoney-backup-control.service'), 'utf8');
    expect(control).toContain(`LoadCredential=ldap.password:${etc}/stoney-backup/ldap.password\n`);
    expect(node + control).not.toMatch(/\/opt\/stoney-backup|\/etc\/stoney-backup/);
    expect((await stat(path.join(etc, 'stoney-backup/stoney-backup.env'))).mode & 0o777).toBe(0o600);
    // no --cron: cron would start the kvmbackup wrapper at once, also on a node that runs the daemon
    expect(await exists(path.join(etc, 'cron.d'))).toBe(false);
    for (const unit of ['stoney-backup-node.service', 'stoney-backup-control.service']) {
      const verify = await run('systemd-analyze', ['verify', path.join(etc, 'systemd/system', unit)], { timeoutMs: 60_000, okExitCodes: [0, 1] });
      expect(`${verify.stdout}${verify.stderr}`.trim(), unit).toBe('');
    }
  });

  it('a second run changes nothing, and keeps an edited env file', async () => {
    const envFile = path.join(etc, 'stoney-backup/stoney-backup.env');
    await appendFile(envFile, 'STONEY_NODE_NAME=edited-by-the-admin\n');
    const before = { prefix: await treeSnapshot(prefix), etc: await treeSnapshot(etc) };
    const second = await install();
    expect(second.exitCode, second.stderr).toBe(0);
    expect(second.stdout).toContain('nothing to change');
    expect(second.stdout).not.toContain('installed');
    expect({ prefix: await treeSnapshot(prefix), etc: await treeSnapshot(etc) }).toEqual(before);
    expect(await readFile(envFile, 'utf8')).toContain('edited-by-the-admin');
    expect(await readdir(scratchTmp)).toEqual([]);
  }, BUILD_TIMEOUT_MS);

  it('--dry-run says what it would do and creates nothing', async () => {
    const freshPrefix = path.join(tmp, 'fresh/opt/stoney-backup');
    const freshEtc = path.join(tmp, 'fresh/etc');
    const r = await run('bash', [SCRIPT, '--prefix', freshPrefix, '--sysconfdir', freshEtc, '--dry-run'], { timeoutMs: 60_000, env: { TMPDIR: scratchTmp } });
    expect(r.stdout).toContain('would build');
    expect(r.stdout).toContain(`would install ${freshEtc}/systemd/system/stoney-backup-node.service`);
    expect(r.stdout).toContain(`would install ${freshEtc}/stoney-backup/stoney-backup.env (mode 600)`);
    expect(await exists(path.join(tmp, 'fresh'))).toBe(false);
    expect(await readdir(scratchTmp)).toEqual([]);
  });

  it('--help, bad arguments and a prefix holding something else', async () => {
    const help = await run('bash', [SCRIPT, '--help'], { timeoutMs: 30_000 });
    expect(help.stdout).toContain('Usage: deploy/install.sh');
    const bad = await run('bash', [SCRIPT, '--prefx', '/x'], { timeoutMs: 30_000, okExitCodes: [2] });
    expect(bad.stderr).toContain("unknown argument '--prefx'");
    const relative = await run('bash', [SCRIPT, '--prefix', 'opt/x'], { timeoutMs: 30_000, okExitCodes: [2] });
    expect(relative.stderr).toContain('is not a plain absolute directory');
    const foreign = path.join(tmp, 'foreign');
    await mkdir(foreign);
    await writeFile(path.join(foreign, 'precious'), 'keep me');
    const refused = await run('bash', [SCRIPT, '--prefix', foreign, '--sysconfdir', path.join(tmp, 'etc2'), '--no-systemd'], { timeoutMs: 30_000, okExitCodes: [2] });
    expect(refused.stderr).toContain('is not a stoney-backup installation');
    expect(await readdir(foreign)).toEqual(['precious']);
    expect(await exists(path.join(tmp, 'etc2'))).toBe(false);
  });
});
