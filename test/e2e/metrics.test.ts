import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { World, vmDn } from '../helpers/world.js';
import { ldapModify } from '../helpers/slapd.js';
import { parsePromText, sampleValue, type Sample } from '../helpers/promText.js';
import { parseLeafName } from '../../src/domain/leafName.js';

/**
 * Issue #14 through the real programs: `stoney-backup node` and `control`
 * as processes with STONEY_METRICS_LISTEN, a backup by the CLI, scrapes of
 * /metrics read as Prometheus text, and `stoney-backup check` as a
 * monitoring system runs it.
 */
const CLI = path.resolve('bin/stoney-backup.js');
const NODE2 = 'node-02.example.com';

interface DaemonProcess {
  child: ResultPromise;
  lines: Record<string, unknown>[];
  /** the port its /metrics is on (when it serves them) */
  port: number | undefined;
}

let w: World;
const daemons: DaemonProcess[] = [];

function env(extra: Record<string, string> = {}): Record<string, string> {
  return {
    STONEY_LDAP_URL: w.slapd.url,
    STONEY_LDAP_BIND_DN: w.slapd.bindDn,
    STONEY_LDAP_PASSWORD_FILE: w.slapd.passwordFile,
    STONEY_LDAP_BASE_DN: w.slapd.baseDn,
    STONEY_LIBVIRT_URI: w.libvirtUri,
    STONEY_IMAGE_ROOTS: w.imageRoot,
    STONEY_ALLOWED_ROOTS: `${w.backupRoot}:${w.retainRoot}`,
    STONEY_RUN_DIR: w.runDir,
    STONEY_FEED_STATE_DIR: w.runDir,
    STONEY_LOG_LEVEL: 'info',
    ...extra,
  };
}

/** Start a daemon command and wait for its "started" log line (and the metrics port, when it serves them). */
async function startDaemon(command: 'node' | 'control', extra: Record<string, string>): Promise<DaemonProcess> {
  const child = execa('node', [CLI, command], { env: env(extra), reject: false, buffer: false, stdin: 'ignore' });
  const d: DaemonProcess = { child, lines: [], port: undefined };
  daemons.push(d);
  let rest = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    rest += chunk.toString();
    const parts = rest.split('\n');
    rest = parts.pop() ?? '';
    for (const p of parts) {
      try {
        const line = JSON.parse(p) as Record<string, unknown>;
        d.lines.push(line);
        if (line['msg'] === 'serving metrics on /metrics') d.port = line['port'] as number;
      } catch {
        d.lines.push({ raw: p });
      }
    }
  });
  const startedMsg = command === 'node' ? 'node daemon started' : 'read the site';
  await w.waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`${command} exited ${child.exitCode}: ${JSON.stringify(d.lines)}`);
    return d.lines.some((l) => l['msg'] === startedMsg);
  }, 30_000);
  return d;
}

async function scrape(d: DaemonProcess): Promise<Sample[]> {
  if (d.port === undefined) throw new Error('this daemon serves no metrics');
  const res = await fetch(`http://127.0.0.1:${d.port}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toContain('text/plain; version=0.0.4');
  return parsePromText(await res.text()).samples;
}

async function check(args: string[], extra: Record<string, string> = {}) {
  return execa('node', [CLI, 'check', ...args], { env: env(extra), reject: false });
}

/** The ports a process listens on, from the kernel (ss), not from its own word. */
async function listeningPortsOf(pid: number): Promise<string[]> {
  const out = (await execa('ss', ['-ltnpH'])).stdout;
  return out.split('\n').filter((l) => l.includes(`pid=${pid},`));
}

let node: DaemonProcess;
let control: DaemonProcess;
let good: string;
let never: string;

beforeAll(async () => {
  await stat('dist/src/cli/main.js').catch(() => {
    throw new Error('dist/ is missing: run `npm run build` (the test command does) before the e2e tests');
  });
  w = await World.start();
  good = (await w.addVm('metrics-good', { running: true })).name;
  never = (await w.addVm('metrics-never', { running: true, noDomain: true })).name;
  node = await startDaemon('node', { STONEY_NODE_NAME: w.nodeName, STONEY_METRICS_LISTEN: '127.0.0.1:0' });
  control = await startDaemon('control', { STONEY_METRICS_LISTEN: '127.0.0.1:0' });
}, 60_000);

afterAll(async () => {
  for (const d of daemons) {
    d.child.kill('SIGTERM');
    await d.child;
  }
  await w?.cleanup();
});

describe('metrics and check after real backups', () => {
  let goodLeaf: string;

  it('a backup through the node daemon moves the step counters, durations, downtime and bytes copied', async () => {
    const r = await execa('node', [CLI, 'backup', good, '--json'], { env: env(), reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
    const leaves = await w.directory.listLeaves(good);
    expect(leaves.map((l) => [l.mode, l.returnValue ?? 0])).toEqual([['finished', 0]]);
    goodLeaf = leaves[0]!.leaf;

    const s = await scrape(node);
    for (const step of ['snapshot', 'merge', 'retain']) {
      expect(sampleValue(s, 'stoney_backup_steps_total', { step, result: 'ok' }), step).toBe(1);
      expect(sampleValue(s, 'stoney_backup_steps_total', { step, result: 'failed' }), step).toBe(0);
      expect(sampleValue(s, 'stoney_backup_step_duration_seconds_count', { step }), step).toBe(1);
      expect(sampleValue(s, 'stoney_backup_step_duration_seconds_sum', { step }), step).toBeGreaterThan(0);
    }
    expect(sampleValue(s, 'stoney_backup_downtime_seconds_count')).toBe(1);
    // the histogram holds the downtime the snapshot reported on the leaf
    const downtime = leaves[0]!.executionTime['downtime'];
    expect(downtime).toBeDefined();
    expect(sampleValue(s, 'stoney_backup_downtime_seconds_sum')).toBeCloseTo(downtime!, 6);
    expect(sampleValue(s, 'stoney_backup_downtime_seconds_bucket', { le: '+Inf' })).toBe(1);
    expect(sampleValue(s, 'stoney_backup_bytes_copied_total', { step: 'retain' })).toBeGreaterThan(0);
    expect(sampleValue(s, 'stoney_backup_directory_connected')).toBe(1);
    expect(sampleValue(s, 'stoney_backup_change_feed_reconnects_total')).toBe(0);
    // the library's process metrics, and no leaf name in any label
    expect(sampleValue(s, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(s.filter((x) => Object.values(x.labels).includes(goodLeaf))).toEqual([]);
  }, 120_000);

  it('the control daemon shows the VM\'s last success, no failure, nothing open or blocked', async () => {
    const planned = parseLeafName(goodLeaf)!.toSeconds();
    await w.waitFor(async () => sampleValue(await scrape(control), 'stoney_backup_last_success_timestamp_seconds', { vm: good }) === planned);
    const s = await scrape(control);
    expect(sampleValue(s, 'stoney_backup_last_failure_timestamp_seconds', { vm: good })).toBe(0);
    expect(sampleValue(s, 'stoney_backup_last_success_timestamp_seconds', { vm: never })).toBe(0);
    expect(s.filter((x) => x.name === 'stoney_backup_workflows')).toEqual([]);
    expect(sampleValue(s, 'stoney_backup_blocked_vms')).toBe(0);
    expect(sampleValue(s, 'stoney_backup_directory_connected')).toBe(1);
  });

  it('check exits 0 for a VM with a fresh backup', async () => {
    const r = await check([good]);
    expect(r.exitCode, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^OK: 1 VMs have a backup younger than 26h \| vms=1;;;0 critical=0;;;0 warning=0;;;0 excluded=0;;;0 oldest_backup_age=\d+s;;93600;0$/);
  });

  it('check exits 2 for a VM never backed up, and for the whole site because of it', async () => {
    const one = await check([never]);
    expect(one.exitCode).toBe(2);
    expect(one.stdout).toMatch(new RegExp(`^CRITICAL: ${never}: never backed up \\| `));
    const site = await check([]);
    expect(site.exitCode).toBe(2);
    expect(site.stdout).toContain(`${never}: never backed up`);
    expect(site.stdout).not.toContain(`${good}:`);
  });

  it('a failed backup is counted, shown as the VM\'s last failure, and check exits 2 for it', async () => {
    // The node refuses a disk outside the image roots (53) before it touches anything.
    await ldapModify(w.slapd, `dn: sstDisk=vda,ou=devices,${vmDn(good)}\nchangetype: modify\nreplace: sstSourceFile\nsstSourceFile: ${path.join(w.root, 'elsewhere', `${good}-vda.qcow2`)}\n`);
    // a new leaf needs a new second
    await new Promise((r) => setTimeout(r, 1100));
    const r = await execa('node', [CLI, 'backup', good], { env: env(), reject: false });
    expect(r.exitCode, r.stderr).toBe(1);
    const failed = (await w.directory.listLeaves(good)).find((l) => l.leaf !== goodLeaf)!;
    expect([failed.mode, failed.returnValue]).toEqual(['snapshotted', 53]);

    const s = await scrape(node);
    expect(sampleValue(s, 'stoney_backup_steps_total', { step: 'snapshot', result: 'failed' })).toBe(1);
    expect(sampleValue(s, 'stoney_backup_downtime_seconds_count')).toBe(1);
    const planned = parseLeafName(failed.leaf)!.toSeconds();
    await w.waitFor(async () => sampleValue(await scrape(control), 'stoney_backup_last_failure_timestamp_seconds', { vm: good }) === planned);

    const c = await check([good, '--max-age', '1d']);
    expect(c.exitCode).toBe(2);
    expect(c.stdout).toMatch(new RegExp(`^CRITICAL: ${good}: newest backup failed \\| vms=1;;;0 critical=1;;;0 `));
    const j = await check([good, '--json']);
    expect(j.exitCode).toBe(2);
    expect(JSON.parse(j.stdout)).toMatchObject({ state: 'CRITICAL', vms: [{ vm: good, state: 'CRITICAL', reasons: ['newest backup failed'] }] });
  }, 120_000);

  it('check exits 3 (UNKNOWN) while the directory is down; the daemons show it and count the reconnect', async () => {
    await w.slapd.halt();
    try {
      const r = await check([good]);
      expect(r.exitCode).toBe(3);
      expect(r.stdout).toMatch(/^UNKNOWN: cannot read the directory at ldap:\/\/127\.0\.0\.1:\d+/);
      await w.waitFor(async () => sampleValue(await scrape(node), 'stoney_backup_directory_connected') === 0, 30_000);
      await w.waitFor(async () => sampleValue(await scrape(control), 'stoney_backup_directory_connected') === 0, 30_000);
    } finally {
      await w.slapd.start();
    }
    for (const d of [node, control]) {
      await w.waitFor(async () => sampleValue(await scrape(d), 'stoney_backup_directory_connected') === 1, 60_000);
      expect(sampleValue(await scrape(d), 'stoney_backup_change_feed_reconnects_total')).toBe(1);
    }
  }, 150_000);

  it('check answers UNKNOWN (3) to a bad --max-age and to an unknown VM', async () => {
    const bad = await check([good, '--max-age', 'soon']);
    expect(bad.exitCode).toBe(3);
    expect(bad.stdout).toBe('UNKNOWN: "soon" is not a duration (e.g. 26h, 90m, 1d12h, 3600)');
    const unknown = await check(['no-such-vm']);
    expect(unknown.exitCode).toBe(3);
    expect(unknown.stdout).toContain('no VM no-such-vm in the directory');
  });
});

describe('metrics are off by default', () => {
  it('a node daemon without STONEY_METRICS_LISTEN opens no port', async () => {
    const quiet = await startDaemon('node', { STONEY_NODE_NAME: NODE2, STONEY_RUN_DIR: path.join(w.root, 'run-node2') });
    expect(quiet.child.pid).toBeDefined();
    expect(await listeningPortsOf(quiet.child.pid!)).toEqual([]);
    expect(quiet.port).toBeUndefined();
    // the check itself: ss does see the metrics port of the daemon that has one
    expect((await listeningPortsOf(node.child.pid!)).join('\n')).toContain(`127.0.0.1:${node.port}`);
  });
});
