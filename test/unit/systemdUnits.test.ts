import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/cli/config.js';
import { run } from '../../src/hypervisor/exec.js';
import { serviceDirectives } from '../helpers/systemdUnit.js';

/**
 * The shipped units keep their sandbox: every directive that confines a
 * daemon is required here with its value, `systemd-analyze verify` must have
 * nothing to say about the files (a misspelled key is only a warning to
 * systemd, and the unit would silently run without it), and the offline
 * `systemd-analyze security` score stays below a ceiling. systemd need not be
 * PID 1 for either: both read the files only.
 */
const NODE_UNIT = path.resolve('deploy/stoney-backup-node.service');
const CONTROL_UNIT = path.resolve('deploy/stoney-backup-control.service');

const words = (values: string[] | undefined): string[] => (values ?? []).flatMap((v) => v.split(/\s+/)).filter(Boolean).sort();

type Expectation = string | { words: string[] } | { includes: string[] } | { absent: true };

/** What must hold for one unit: problems found, none when the unit is as required. */
export function unitProblems(unitText: string, table: Record<string, Expectation>): string[] {
  const d = serviceDirectives(unitText);
  const problems: string[] = [];
  for (const [key, want] of Object.entries(table)) {
    const got = d.get(key);
    if (typeof want === 'string') {
      if (got?.at(-1) !== want) problems.push(`${key}=${want} expected, got ${got === undefined ? 'nothing' : got.join(' | ')}`);
    } else if ('words' in want) {
      if (got === undefined || JSON.stringify(words(got)) !== JSON.stringify([...want.words].sort())) problems.push(`${key}= exactly ${want.words.join(' ') || '(empty)'} expected, got ${got === undefined ? 'nothing' : words(got).join(' ') || '(empty)'}`);
    } else if ('includes' in want) {
      for (const w of want.includes) if (!(got ?? []).includes(w)) problems.push(`${key}=${w} expected among ${got === undefined ? 'nothing' : got.join(' | ')}`);
    } else if (got !== undefined) {
      problems.push(`${key}= must not be set (got ${got.join(' | ')})`);
    }
  }
  return problems;
}

/** Confinement both daemons get. */
const common: Record<string, Expectation> = {
  Type: 'simple',
  Restart: 'on-failure',
  KillMode: 'mixed',
  ProtectSystem: 'strict',
  ProtectHome: 'yes',
  PrivateTmp: 'yes',
  PrivateDevices: 'yes',
  PrivateMounts: 'yes',
  NoNewPrivileges: 'yes',
  ProtectKernelTunables: 'yes',
  ProtectKernelModules: 'yes',
  ProtectKernelLogs: 'yes',
  ProtectControlGroups: 'yes',
  ProtectClock: 'yes',
  ProtectHostname: 'yes',
  ProtectProc: 'invisible',
  RestrictNamespaces: 'yes',
  RestrictRealtime: 'yes',
  RestrictSUIDSGID: 'yes',
  LockPersonality: 'yes',
  SystemCallArchitectures: 'native',
  SystemCallErrorNumber: 'EPERM',
  SystemCallFilter: { includes: ['@system-service'] },
  RestrictAddressFamilies: { words: ['AF_UNIX', 'AF_INET', 'AF_INET6'] },
  AmbientCapabilities: { words: [] },
  // Node's JIT needs writable executable pages (see the units' comments).
  MemoryDenyWriteExecute: { absent: true },
};

/** The directories a node step writes by default: the image roots and allowed roots from the configuration's defaults, nested ones folded into their parent. */
async function defaultWrittenRoots(): Promise<{ roots: string[]; runDir: string; feedStateDir: string }> {
  const c = await loadConfig(undefined, { STONEY_LDAP_URL: 'ldaps://ldap.example.com', STONEY_LDAP_BIND_DN: 'cn=x', STONEY_LDAP_PASSWORD_FILE: '/x', STONEY_LDAP_BASE_DN: 'o=x' });
  const all = [...new Set([...c.imageRoots, ...c.allowedRoots])];
  const roots = all.filter((r) => !all.some((o) => o !== r && r.startsWith(`${o}/`)));
  return { roots, runDir: c.runDir, feedStateDir: c.feedStateDir };
}

async function nodeTable(): Promise<Record<string, Expectation>> {
  const { roots, runDir, feedStateDir } = await defaultWrittenRoots();
  return {
    ...common,
    EnvironmentFile: '/etc/stoney-backup/stoney-backup.env',
    ExecStart: '/usr/bin/node /opt/stoney-backup/bin/stoney-backup.js node --config /etc/stoney-backup/stoney-backup.env',
    TimeoutStopSec: '30min',
    // root: chown to the directory's owner, images of other users, libvirtd as uid 0
    User: { absent: true },
    DynamicUser: { absent: true },
    ReadWritePaths: { words: roots },
    RuntimeDirectory: path.relative('/run', runDir),
    RuntimeDirectoryPreserve: 'yes',
    StateDirectory: path.relative('/var/lib', feedStateDir),
    CapabilityBoundingSet: { words: ['CAP_CHOWN', 'CAP_FOWNER', 'CAP_DAC_OVERRIDE'] },
  };
}

const controlTable: Record<string, Expectation> = {
  ...common,
  DynamicUser: 'yes',
  PrivateUsers: 'yes',
  RemoveIPC: 'yes',
  UMask: '0077',
  CapabilityBoundingSet: { words: [] },
  SystemCallFilter: { includes: ['@system-service', '~@privileged @resources'] },
  // the env file's values would override Environment= (the credential paths)
  EnvironmentFile: { absent: true },
  LoadCredential: { includes: ['stoney-backup.env:/etc/stoney-backup/stoney-backup.env', 'ldap.password:/etc/stoney-backup/ldap.password'] },
  Environment: { includes: ['STONEY_LDAP_PASSWORD_FILE=%d/ldap.password', 'STONEY_FEED_STATE_DIR=%S/stoney-backup-control'] },
  StateDirectory: 'stoney-backup-control',
  ReadWritePaths: { absent: true },
  ExecStart: '/usr/bin/node /opt/stoney-backup/bin/stoney-backup.js control --config %d/stoney-backup.env',
};

async function analyze(args: string[]): Promise<{ exitCode: number; output: string }> {
  const r = await run('systemd-analyze', args, { timeoutMs: 60_000, okExitCodes: [0, 1] });
  return { exitCode: r.exitCode, output: `${r.stdout}${r.stderr}`.trim() };
}

/** Exposure from the last line of `systemd-analyze security`, e.g. "→ Overall exposure level for x.service: 2.2 OK". */
async function exposure(unitFile: string): Promise<number> {
  const { output } = await analyze(['security', '--offline=true', '--no-pager', unitFile]);
  const m = /Overall exposure level for \S+: ([\d.]+)/.exec(output);
  if (!m) throw new Error(`no exposure level in: ${output.slice(-400)}`);
  return Number(m[1]);
}

describe('systemd units', () => {
  let scratch: string;
  beforeAll(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'stoney-units-'));
    await run('systemd-analyze', ['--version'], { timeoutMs: 10_000 }).catch((err: unknown) => {
      throw new Error(`systemd-analyze is needed to check the units (Debian: apt-get install systemd; it need not run as PID 1): ${(err as Error).message}`);
    });
  });
  afterAll(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  it('node unit: root with a read-only system, writes only the default roots, three capabilities', async () => {
    expect(unitProblems(await readFile(NODE_UNIT, 'utf8'), await nodeTable())).toEqual([]);
  });

  it('control unit: a dynamic user without capabilities, its password and env file as credentials', async () => {
    expect(unitProblems(await readFile(CONTROL_UNIT, 'utf8'), controlTable)).toEqual([]);
  });

  it('the table notices a removed, misspelled or widened directive', async () => {
    const text = await readFile(NODE_UNIT, 'utf8');
    const table = await nodeTable();
    expect(unitProblems(text.replace(/^ProtectSystem=strict\n/m, ''), table)).toEqual(['ProtectSystem=strict expected, got nothing']);
    expect(unitProblems(text.replace(/^ProtectHome=/m, 'ProtectHom='), table)).toEqual(['ProtectHome=yes expected, got nothing']);
    expect(unitProblems(text.replace(/^(CapabilityBoundingSet=.*)$/m, '$1 CAP_SYS_ADMIN'), table)).toHaveLength(1);
    expect(unitProblems(text.replace(/^(ReadWritePaths=.*)$/m, '$1 /etc'), table)).toHaveLength(1);
    expect(unitProblems(`${text}\n[Service]\nMemoryDenyWriteExecute=yes\n`, table)).toHaveLength(1);
  });

  it('the units name the paths the README installs to', async () => {
    const readme = await readFile('README.md', 'utf8');
    for (const p of ['/opt/stoney-backup', '/etc/stoney-backup/stoney-backup.env', '/etc/stoney-backup/ldap.password']) expect(readme).toContain(p);
  });

  it.each([['node', NODE_UNIT], ['control', CONTROL_UNIT]])('systemd-analyze verify has nothing to say about the %s unit', async (_name, unit) => {
    const r = await analyze(['verify', unit]);
    expect(r).toEqual({ exitCode: 0, output: '' });
  });

  it('systemd-analyze verify reports a misspelled directive (so the check above can fail)', async () => {
    const copy = path.join(scratch, path.basename(NODE_UNIT));
    await writeFile(copy, (await readFile(NODE_UNIT, 'utf8')).replace(/^ProtectSystem=/m, 'ProtectSytem='));
    expect((await analyze(['verify', copy])).output).toMatch(/Unknown key 'ProtectSytem'/);
  });

  it('systemd-analyze security: exposure of the node unit at most 2.5, of the control unit at most 1.5', async () => {
    expect(await exposure(NODE_UNIT)).toBeLessThanOrEqual(2.5);
    expect(await exposure(CONTROL_UNIT)).toBeLessThanOrEqual(1.5);
  });

  it('systemd-analyze security scores a unit without the sandbox as unsafe (so the ceiling means something)', async () => {
    const bare = path.join(scratch, 'bare.service');
    const text = await readFile(NODE_UNIT, 'utf8');
    await writeFile(bare, text.slice(0, text.indexOf('# --- Sandbox')) + '\n[Install]\nWantedBy=multi-user.target\n');
    expect(await exposure(bare)).toBeGreaterThan(9);
  });
});
