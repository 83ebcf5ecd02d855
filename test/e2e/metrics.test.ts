import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { World, vmDn } from '../helpers/world.js';
import { ldapModify } from '../helpers/slapd.js';
import { parsePromText, sampleValue, type Sample } from '../helpers/promText.js';
import { parseLeafName } from '../../src/domain/leafName.js';
import { readManifest } from '../../src/node/retainStep.js';

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

/** A port free right now on loopback (for Prometheus, which cannot report one it picked itself). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

interface PromVector {
  metric: Record<string, string>;
  value: [number, string];
}

/** An instant query through Prometheus's HTTP API; fails on a PromQL error. */
async function promQuery(expr: string): Promise<PromVector[]> {
  const res = await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(expr)}`);
  const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: PromVector[] } };
  if (body.status !== 'success') throw new Error(`${expr}: ${body.error}`);
  expect(body.data?.resultType, expr).toBe('vector');
  return body.data!.result;
}

const RULES = path.resolve('deploy/prometheus/stoney-backup-rules.yml');
const DASHBOARD = path.resolve('deploy/grafana/stoney-backup-dashboard.json');

/** A real Prometheus on loopback scraping both daemons every second, with the shipped rules loaded. */
async function startPrometheus(): Promise<void> {
  const dir = path.join(w.root, 'prometheus');
  await mkdir(dir);
  promPort = await freePort();
  await writeFile(path.join(dir, 'prometheus.yml'), `global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - ${RULES}
scrape_configs:
  - job_name: stoney-backup-node
    static_configs: [{ targets: ['127.0.0.1:${node.port}'] }]
  - job_name: stoney-backup-control
    static_configs: [{ targets: ['127.0.0.1:${control.port}'] }]
`);
  prometheus = execa('prometheus', [
    `--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn',
  ], { reject: false, stdin: 'ignore' });
  await w.waitFor(async () => {
    if (prometheus?.exitCode !== null) throw new Error(`prometheus exited: ${(await prometheus)?.stderr}`);
    return fetch(`http://127.0.0.1:${promPort}/-/ready`).then((r) => r.ok, () => false);
  }, 30_000);
}

let prometheus: ResultPromise | undefined;
let promPort = 0;
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
  // before the backup: rate() and increase() need a scrape from before it
  await startPrometheus();
}, 90_000);

afterAll(async () => {
  if (prometheus) {
    prometheus.kill('SIGTERM');
    await prometheus;
  }
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
    // Every byte of the backup is counted, by the step that copied it: the
    // live method keeps the memory state in the snapshot and the disk image
    // in the merge; retain copies the definition and the LDIF.
    const layout = w.layoutOf(good, goodLeaf);
    const files = (await readManifest(layout.manifestPath)).files;
    const bytesOf = (match: (name: string) => boolean) => files.filter((f) => match(f.name)).reduce((sum, f) => sum + f.size, 0);
    const named = (...names: string[]) => (n: string) => names.some((x) => n === path.basename(layout.backupPath(x)));
    const copied = (step: string) => sampleValue(s, 'stoney_backup_bytes_copied_total', { step });
    expect(copied('snapshot')).toBe(bytesOf(named(layout.stateFileName)));
    expect(copied('snapshot')).toBeGreaterThan(0);
    expect(copied('retain')).toBe(bytesOf(named(layout.xmlFileName, layout.ldifFileName)));
    expect(copied('merge')).toBe(bytesOf((n) => !named(layout.stateFileName, layout.xmlFileName, layout.ldifFileName)(n)));
    expect(copied('merge')).toBeGreaterThan(0);
    expect(copied('merge')! + copied('snapshot')! + copied('retain')!).toBe(bytesOf(() => true));
    // the copies' throughput stays at the rate the last one ended at; no copy runs, so no time is left
    for (const step of ['snapshot', 'merge', 'retain']) {
      expect(sampleValue(s, 'stoney_backup_copy_throughput_bytes_per_second', { step }), step).toBeGreaterThan(0);
      expect(sampleValue(s, 'stoney_backup_copy_eta_seconds', { step }), step).toBe(0);
    }
    expect(sampleValue(s, 'stoney_backup_copy_throughput_bytes_per_second', { step: 'unretainLargeFiles' })).toBe(0);
    expect(sampleValue(s, 'stoney_backup_directory_connected')).toBe(1);
    expect(sampleValue(s, 'stoney_backup_change_feed_reconnects_total')).toBe(0);
    // the library's process metrics, and no leaf name in any label
    expect(sampleValue(s, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(s.filter((x) => Object.values(x.labels).includes(goodLeaf))).toEqual([]);
  }, 120_000);

  it('a restore through the node daemon counts the bytes unretainLargeFiles copied and shows their throughput', async () => {
    const r = await execa('node', [CLI, 'restore', good, goodLeaf, '--prefer', 'backup'], { env: env(), reject: false, input: '' });
    expect({ code: r.exitCode, out: r.stdout }, r.stderr).toEqual({ code: 0, out: `${good}: restored from ${goodLeaf}` });
    const s = await scrape(node);
    for (const step of ['unretainSmallFiles', 'unretainLargeFiles', 'restore']) expect(sampleValue(s, 'stoney_backup_steps_total', { step, result: 'ok' }), step).toBe(1);
    // the state file and the disk image: what the backup's snapshot and merge had copied
    const backedUp = sampleValue(s, 'stoney_backup_bytes_copied_total', { step: 'snapshot' })! + sampleValue(s, 'stoney_backup_bytes_copied_total', { step: 'merge' })!;
    expect(sampleValue(s, 'stoney_backup_bytes_copied_total', { step: 'unretainLargeFiles' })).toBe(backedUp);
    expect(sampleValue(s, 'stoney_backup_copy_throughput_bytes_per_second', { step: 'unretainLargeFiles' })).toBeGreaterThan(0);
    expect(sampleValue(s, 'stoney_backup_copy_eta_seconds', { step: 'unretainLargeFiles' })).toBe(0);
    expect((await w.directory.listLeaves(good)).map((l) => [l.mode, l.returnValue ?? 0])).toEqual([['finished', 0]]);
  }, 120_000);

  it('the control daemon shows the VM\'s last success, no failure, nothing open or blocked', async () => {
    const planned = parseLeafName(goodLeaf)!.toSeconds();
    await w.waitFor(async () => sampleValue(await scrape(control), 'stoney_backup_last_success_timestamp_seconds', { vm: good }) === planned);
    const s = await scrape(control);
    expect(sampleValue(s, 'stoney_backup_last_failure_timestamp_seconds', { vm: good })).toBe(0);
    expect(sampleValue(s, 'stoney_backup_last_success_timestamp_seconds', { vm: never })).toBe(0);
    const open = s.filter((x) => x.name === 'stoney_backup_workflows');
    expect(open.length).toBeGreaterThan(10); // every mode a workflow can be open in, as a 0
    expect(open.filter((x) => x.value !== 0)).toEqual([]);
    expect(sampleValue(s, 'stoney_backup_workflows', { protocol: 'backup', mode: 'snapshotting' })).toBe(0);
    expect(sampleValue(s, 'stoney_backup_blocked_vms')).toBe(0);
    for (const protocol of ['backup', 'restore']) expect(sampleValue(s, 'stoney_backup_oldest_workflow_age_seconds', { protocol }), protocol).toBe(0);
    expect(sampleValue(s, 'stoney_backup_step_timeout_seconds')).toBe(6 * 3600); // STONEY_STEP_TIMEOUT_S's default
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

  it('a real Prometheus reads the same figures, loads the rules, and every rule and dashboard expression runs on them', async () => {
    // wait for a scrape after the failed backup
    await w.waitFor(async () => (await promQuery(`stoney_backup_steps_total{step="snapshot",result="failed"} == 1`)).length === 1, 30_000);
    const value = async (expr: string) => (await promQuery(expr)).map((v) => Number(v.value[1]));
    expect(await value('stoney_backup_steps_total{job="stoney-backup-node",step="retain",result="ok"}')).toEqual([1]);
    expect(await value('stoney_backup_downtime_seconds_count{job="stoney-backup-node"}')).toEqual([1]);
    expect(await value(`stoney_backup_last_success_timestamp_seconds{vm="${good}"}`)).toEqual([parseLeafName(goodLeaf)!.toSeconds()]);
    expect(await value('up{job=~"stoney-backup.*"}')).toEqual([1, 1]);

    const rulesRes = (await (await fetch(`http://127.0.0.1:${promPort}/api/v1/rules`)).json()) as { data: { groups: { rules: { name: string; health: string; query: string }[] }[] } };
    const rules = rulesRes.data.groups.flatMap((g) => g.rules);
    expect(rules.map((r) => r.name)).toEqual(['StoneyBackupMissing', 'StoneyBackupNewestFailed', 'StoneyBackupBlocked', 'StoneyBackupRunningLong', 'StoneyBackupDirectoryDisconnected', 'StoneyBackupDaemonDown']);
    await w.waitFor(async () => {
      const r = (await (await fetch(`http://127.0.0.1:${promPort}/api/v1/rules`)).json()) as typeof rulesRes;
      return r.data.groups.flatMap((g) => g.rules).every((x) => x.health === 'ok');
    }, 15_000);
    // The conditions that hold in this world fire for exactly their VMs …
    const vmsOf = async (expr: string) => (await promQuery(expr)).map((v) => v.metric['vm']).sort();
    // (the sample tree's VMs have never been backed up either)
    const neverBackedUp = [];
    for (const vm of await w.directory.listVms()) if (vm.name !== good && !(await w.directory.effectiveSettings(vm)).excluded) neverBackedUp.push(vm.name);
    expect(neverBackedUp).toContain(never);
    expect(await vmsOf(rules[0]!.query)).toEqual(neverBackedUp.sort());
    expect(await vmsOf(rules[1]!.query)).toEqual([good]);
    // … the others are quiet, and every series any rule reads exists.
    for (const r of rules.slice(2)) expect(await promQuery(r.query), r.name).toEqual([]);
    // The running-long rule joins each protocol's age with the one step timeout: with a timeout below 0 both would fire.
    const runningLong = rules.find((r) => r.name === 'StoneyBackupRunningLong')!.query;
    expect(runningLong).toContain('stoney_backup_step_timeout_seconds');
    const firing = await promQuery(runningLong.replace('stoney_backup_step_timeout_seconds', '(stoney_backup_step_timeout_seconds - 1e9)'));
    expect(firing.map((v) => v.metric['protocol']).sort()).toEqual(['backup', 'restore']);
    for (const r of rules) {
      for (const name of new Set(r.query.match(/\b(stoney_backup_[a-z_]+|up)\b/g) ?? [])) {
        expect((await promQuery(`count(${name})`)).length, `${r.name} reads ${name}`).toBe(1);
      }
    }

    const dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };
    const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => ({ panel: p.title, expr: t.expr })));
    expect(exprs.length).toBeGreaterThanOrEqual(10);
    for (const { panel, expr } of exprs) expect((await promQuery(expr)).length, `${panel}: ${expr}`).toBeGreaterThan(0);
  }, 90_000);

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

  it('check answers UNKNOWN (3) to an unknown option, a bad --max-age and an unknown VM', async () => {
    const bogus = await check([good, '--bogus']);
    expect({ code: bogus.exitCode, stderr: bogus.stderr }).toEqual({ code: 3, stderr: '' });
    expect(bogus.stdout).toMatch(/^UNKNOWN: Unknown option '--bogus'[^\n]*$/);
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
