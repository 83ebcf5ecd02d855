/**
 * Control daemon benchmark: measures and prints, asserts nothing.
 *
 *   npm run bench:control   (= build, then node dist/test/bench/controlBench.js)
 *
 * BENCH_SIZES (default "1000,5000") picks the site sizes. Each size takes
 * 1.5–4 minutes, most of it waiting for the planned minute; every run is
 * bounded (BENCH_DEADLINE_S after the planned minute, default 300) and
 * removes its slapd and files, also on Ctrl-C.
 *
 * Per size: a private slapd with the project's ldif/config.ldif (syncprov,
 * indexes) holding N VMs spread over 50 nodes, every VM due at the same
 * minute (the global schedule is set to the first whole minute at least
 * 40 s ahead, UTC). The real ControlDaemon runs in its own process
 * (controlProcess.ts: sync feed, info logging to a file, a session that
 * counts its searches). 50 simulated node daemons (SimulatedNodes.ts: one
 * feed and session for all, 4 steps at once per node) answer every command
 * at once.
 *
 * Printed: start-up time (process start → site read, feed in sync);
 * seconds after the planned minute until every leaf was created, until
 * every leaf had its snapshot command, until every leaf was finished;
 * peak RSS of the control process (VmHWM); slapd CPU (utime+stime, from the
 * planned minute − 5 s to the end) per VM; the control's searches per VM
 * (same span; its feed's one persistent search not counted); how long
 * SIGTERM took; growth from the first size to the last.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { lstat, mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startSlapd, ldapAdd, ldapModify, PROJECT_ROOT, type PrivateSlapd } from '../helpers/slapd.js';
import { SITE_VMS_DN, siteNodeName, writeSiteLdif } from '../helpers/siteLdif.js';
import { SimulatedNodes, type SiteObservations } from './SimulatedNodes.js';

const NODES = 50;
const SIZES = (process.env.BENCH_SIZES ?? '1000,5000').split(',').map((s) => Number(s.trim())).filter((n) => n > 0);
const DEADLINE_S = Number(process.env.BENCH_DEADLINE_S ?? 300);
const GLOBAL_BACKUP = 'ou=backup,ou=configuration,ou=virtualization,ou=services,o=stepping-stone,c=ch';
const here = path.dirname(fileURLToPath(import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const goals = { startsAt: 5_000, snapshotS: 30, finishedS: 120, rssMb: 200, slapdMsPerVm: 20, searchesPerVm: 10, stopS: 10 };

interface Result {
  vms: number;
  startupS: number;
  createdS: number | undefined;
  snapshotS: number | undefined;
  finishedS: number | undefined;
  finished: number;
  rssMb: number;
  slapdCpuMsPerVm: number;
  searchesPerVm: number;
  startupSearches: number;
  stopS: number | undefined;
  nodeErrors: number;
  controlCpuS: number;
  nodesCpuS: number;
  slapdCpuS: number;
}

/** utime + stime of a process, ms. */
async function cpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
}

async function peakRssKb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

// Cleanup on Ctrl-C: whatever runs now.
const cleanups = new Set<() => Promise<void>>();
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    void Promise.allSettled([...cleanups].map((c) => c())).then(() => process.exit(130));
  });
}

async function runSize(n: number): Promise<Result> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'stoney-control-bench-'));
  let slapd: PrivateSlapd | undefined;
  let control: ChildProcess | undefined;
  let nodes: SimulatedNodes | undefined;
  const cleanup = async () => {
    control?.kill('SIGKILL');
    await nodes?.stop();
    await slapd?.stop();
    await rm(tmp, { recursive: true, force: true });
  };
  cleanups.add(cleanup);
  try {
    process.stdout.write(`\n${n} VMs: loading the directory…\n`);
    slapd = await startSlapd({ ldifFiles: [await writeSiteLdif(path.join(tmp, 'site.ldif'), n, NODES)] });
    const slapdPid = slapd.pid;
    if (slapdPid === undefined) throw new Error('slapd has no pid');

    // Every VM due at the first whole minute at least 40 s from now (UTC).
    const planned = new Date(Math.ceil((Date.now() + 40_000) / 60_000) * 60_000);
    await ldapModify(slapd, [
      `dn: ${GLOBAL_BACKUP}`, 'changetype: modify',
      'replace: sstCronMinute', `sstCronMinute: ${planned.getUTCMinutes()}`, '-',
      'replace: sstCronHour', `sstCronHour: ${planned.getUTCHours()}`, '-',
      'replace: sstCronActive', 'sstCronActive: TRUE', '',
    ].join('\n'));

    // The sample tree's two VMs live on nodes nobody simulates: out of the batch, or it waits for their claim timeout.
    await ldapAdd(slapd, ['kvm-001', 'kvm-002'].map((vm) => [
      `dn: ou=backup,sstVirtualMachine=${vm},${SITE_VMS_DN}`, 'objectClass: top', 'objectClass: organizationalUnit',
      'objectClass: sstVirtualizationBackupObjectClass', 'ou: backup', 'sstBackupExcludeFromBackup: TRUE', '',
    ].join('\n')).join('\n'));

    const connection = { url: slapd.url, bindDn: slapd.bindDn, passwordFile: slapd.passwordFile, baseDn: slapd.baseDn };
    const seen: SiteObservations = { seen: new Map(), snapshot: new Map(), finished: new Map(), errors: 0 };
    // vm-00001 is on the first node, vm-00002 on the second, … (siteLdif's round robin).
    nodes = new SimulatedNodes(connection, (vm) => siteNodeName((Number(/(\d+)$/.exec(vm)?.[1] ?? 1) - 1) % NODES), seen);
    await nodes.start();

    const stats = { searches: 0, rssKb: 0, stoppedMs: undefined as number | undefined };
    const started = new Promise<{ ms: number; vms: number }>((resolve, reject) => {
      const t0 = performance.now();
      control = fork(path.join(here, 'controlProcess.js'), [], {
        env: {
          ...process.env,
          BENCH_URL: slapd!.url,
          BENCH_BIND_DN: slapd!.bindDn,
          BENCH_PASSWORD_FILE: slapd!.passwordFile,
          BENCH_BASE_DN: slapd!.baseDn,
          BENCH_STATE_FILE: path.join(tmp, 'changefeed-control.json'),
          BENCH_LOG_FILE: path.join(tmp, 'control.log'),
        },
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        // BENCH_CONTROL_PROFILE=DIR writes a V8 CPU profile of the control process there.
        execArgv: process.env.BENCH_CONTROL_PROFILE ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_CONTROL_PROFILE] : [],
      });
      control.on('message', (m: { type: string; ms?: number; vms?: number; searches?: number; rssKb?: number }) => {
        if (m.type === 'started') {
          stats.searches = m.searches ?? 0;
          resolve({ ms: performance.now() - t0, vms: m.vms ?? 0 });
        }
        if (m.type === 'stats') Object.assign(stats, { searches: m.searches ?? 0, rssKb: m.rssKb ?? 0 });
        if (m.type === 'stopped') stats.stoppedMs = m.ms;
      });
      control.once('exit', (code) => reject(new Error(`the control process exited with ${code} before it started`)));
    });
    const start = await started;
    const startupSearches = stats.searches;
    process.stdout.write(`${n} VMs: control started in ${(start.ms / 1000).toFixed(1)} s holding ${start.vms} VMs; planned minute ${planned.toISOString()}\n`);

    // Baselines just before the planned minute.
    await sleep(Math.max(0, planned.getTime() - 5_000 - Date.now()));
    const cpu0 = await cpuMs(slapdPid);
    const controlCpu0 = await cpuMs(control!.pid!);
    const nodesCpu0 = process.cpuUsage();
    const searches0 = stats.searches;
    const t0 = performance.now() + (planned.getTime() - Date.now());
    const deadline = t0 + DEADLINE_S * 1000;
    let lastReport = 0;
    while (seen.finished.size < n && performance.now() < deadline) {
      await sleep(250);
      if (performance.now() - lastReport > 10_000 && performance.now() > t0) {
        lastReport = performance.now();
        process.stdout.write(`  +${((performance.now() - t0) / 1000).toFixed(0)} s: seen ${seen.seen.size}, snapshot ${seen.snapshot.size}, finished ${seen.finished.size}\n`);
      }
    }
    if (seen.finished.size < n) {
      // Not done in time: show what the control daemon said last.
      const log = await readFile(path.join(tmp, 'control.log'), 'utf8').catch(() => '');
      const problems = log.split('\n').filter((l) => /"level":(4|5|6)0/.test(l));
      process.stdout.write(`  not finished; the control log has ${problems.length} warnings/errors, the last:\n${problems.slice(-5).join('\n')}\nand ends with:\n${log.trim().split('\n').slice(-3).join('\n')}\n`);
    }
    await sleep(1_500); // one more stats message
    const cpu1 = await cpuMs(slapdPid);
    const controlCpuS = (await cpuMs(control!.pid!) - controlCpu0) / 1000;
    const nodesCpu = process.cpuUsage(nodesCpu0);
    const nodesCpuS = (nodesCpu.user + nodesCpu.system) / 1e6;
    const searches1 = stats.searches;
    const rssKb = await peakRssKb(control!.pid!);
    const allAt = (m: Map<string, number>) => (m.size >= n ? (Math.max(...m.values()) - t0) / 1000 : undefined);

    // SIGTERM: how long until the process is gone.
    const exited = new Promise<number>((resolve) => control!.once('exit', () => resolve(performance.now())));
    const tTerm = performance.now();
    control!.kill('SIGTERM');
    const gone = await Promise.race([exited, sleep(15_000).then(() => undefined)]);
    const stopS = gone === undefined ? undefined : (gone - tTerm) / 1000;
    control = undefined;

    return {
      vms: n,
      startupS: start.ms / 1000,
      createdS: allAt(seen.seen),
      snapshotS: allAt(seen.snapshot),
      finishedS: allAt(seen.finished),
      finished: seen.finished.size,
      rssMb: rssKb / 1024,
      slapdCpuMsPerVm: (cpu1 - cpu0) / n,
      searchesPerVm: (searches1 - searches0) / n,
      startupSearches,
      stopS,
      nodeErrors: seen.errors,
      controlCpuS,
      nodesCpuS,
      slapdCpuS: (cpu1 - cpu0) / 1000,
    };
  } finally {
    await cleanup();
    cleanups.delete(cleanup);
  }
}

function fmt(v: number | undefined, digits = 1): string {
  return v === undefined ? 'not reached' : v.toFixed(digits);
}

function mark(ok: boolean): string {
  return ok ? 'met' : 'MISSED';
}

async function main(): Promise<void> {
  // dist/test/helpers/slapd.js looks for ldif/ next to dist/test: point it at the project's.
  const link = path.join(PROJECT_ROOT, 'ldif');
  try {
    await lstat(link);
  } catch {
    await symlink(path.resolve(PROJECT_ROOT, '..', 'ldif'), link, 'dir');
  }
  process.stdout.write(`control bench: ${SIZES.join(', ')} VMs on ${NODES} simulated nodes, all due in one minute; ${os.cpus().length} CPUs\n`);
  const results: Result[] = [];
  for (const n of SIZES) results.push(await runSize(n));

  process.stdout.write('\n| VMs | start-up s | all created s | all in snapshot s | all finished s | finished | control RSS MB | slapd CPU ms/VM | searches/VM | start-up searches | SIGTERM s |\n');
  process.stdout.write('|---|---|---|---|---|---|---|---|---|---|---|\n');
  for (const r of results) {
    process.stdout.write(`| ${r.vms} | ${fmt(r.startupS)} | ${fmt(r.createdS)} | ${fmt(r.snapshotS)} | ${fmt(r.finishedS)} | ${r.finished} | ${r.rssMb.toFixed(0)} | ${r.slapdCpuMsPerVm.toFixed(2)} | ${r.searchesPerVm.toFixed(2)} | ${r.startupSearches} | ${fmt(r.stopS, 2)} |\n`);
  }
  process.stdout.write('\nCPU seconds over the same span (2 cores shared by all three): ');
  process.stdout.write(results.map((r) => `${r.vms} VMs: slapd ${r.slapdCpuS.toFixed(1)}, control ${r.controlCpuS.toFixed(1)}, simulated nodes ${r.nodesCpuS.toFixed(1)}`).join('; ') + '\n');
  const first = results[0];
  const last = results.at(-1);
  if (first && last && last !== first) {
    const ratio = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined || a === 0 ? 'n/a' : (b / a).toFixed(2));
    process.stdout.write(`\ngrowth ${first.vms} → ${last.vms} VMs (×${(last.vms / first.vms).toFixed(0)}): start-up ×${ratio(first.startupS, last.startupS)}, `
      + `all in snapshot ×${ratio(first.snapshotS, last.snapshotS)}, all finished ×${ratio(first.finishedS, last.finishedS)}, `
      + `slapd CPU total ×${ratio(first.slapdCpuMsPerVm * first.vms, last.slapdCpuMsPerVm * last.vms)}, RSS ×${ratio(first.rssMb, last.rssMb)}\n`);
  }
  const big = results.find((r) => r.vms >= goals.startsAt);
  process.stdout.write('\ngoals (on this machine):\n');
  if (big) process.stdout.write(`  starts at ${goals.startsAt} VMs: ${mark(big.startupS > 0)}\n`);
  for (const r of results) {
    process.stdout.write(`  ${r.vms} VMs: in snapshot ≤ ${goals.snapshotS} s ${mark((r.snapshotS ?? Infinity) <= goals.snapshotS)}; `
      + `finished ≤ ${goals.finishedS} s ${mark((r.finishedS ?? Infinity) <= goals.finishedS)}; RSS ≤ ${goals.rssMb} MB ${mark(r.rssMb <= goals.rssMb)}; `
      + `slapd ≤ ${goals.slapdMsPerVm} ms/VM ${mark(r.slapdCpuMsPerVm <= goals.slapdMsPerVm)}; ≤ ${goals.searchesPerVm} searches/VM ${mark(r.searchesPerVm <= goals.searchesPerVm)}; `
      + `SIGTERM ≤ ${goals.stopS} s ${mark((r.stopS ?? Infinity) <= goals.stopS)}; node errors ${r.nodeErrors}\n`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`control bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
