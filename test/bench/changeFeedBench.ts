/**
 * Change feed benchmark: measures and prints, asserts nothing.
 *
 *   npm run bench:feed        (= npm run build, then node dist/test/bench/changeFeedBench.js)
 *
 * About 3 minutes. BENCH_ROUNDS (default 500) and BENCH_IDLE_MS (default
 * 60000) shorten it for a quick look. Run it on an otherwise idle host: the
 * figures are wall-clock latencies and CPU shares.
 *
 * A private slapd (test/helpers/slapd.ts, ldif/config.ldif with syncprov) on
 * loopback holds 1,000 VMs with 5 leaves each, 5,000 leaves, spread over 20
 * nodes; the measured node (node-01) has 50 VMs and 250 leaves. The sync
 * feed's search covers the whole VM subtree (it filters by node itself), the
 * poller searches only its node's leaves.
 *
 * 1. Reaction latency: from the control side starting its compare-and-swap
 *    `initialized` → `snapshot` to the node side having written `snapshotting`.
 *    The node side is a minimal claimer with the node daemon's read path:
 *    feed event → keyed work queue (concurrency 4, as NodeDaemon) → getLeaf →
 *    getVm → casMode `snapshot` → `snapshotting`; no hypervisor step runs.
 *    Control and node side use separate LDAP sessions in this one process.
 *    500 rounds per feed: the sync feed one round after the other (5 ms
 *    apart); the polling feeds with 25 rounds in flight, each started at a
 *    random point of the poll interval (so 500 rounds fit in seconds instead
 *    of minutes; a write still waits for the next poll like a lone one would).
 *    A round uses one of node-01's 250 leaves and afterwards puts it back to
 *    `initialized` (not timed), so each leaf serves two rounds per feed.
 * 2. Idle cost: the node-side feed alone, 5,000 leaves, no change at all,
 *    60 s, process.cpuUsage() of this process and slapd's utime+stime from
 *    /proc, each as % of one core.
 */
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startSlapd, type PrivateSlapd } from '../helpers/slapd.js';
import { connectDirectory } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { SyncReplChangeFeed } from '../../src/directory/SyncReplChangeFeed.js';
import { PollingChangeFeed } from '../../src/directory/PollingChangeFeed.js';
import { KeyedWorkQueue } from '../../src/node/KeyedWorkQueue.js';
import type { ChangeFeed } from '../../src/directory/types.js';
import { ldifText, vmEntryLines } from '../helpers/directoryEntries.js';

const NODES = 20;
const nodeName = (n: number) => `node-${String(n + 1).padStart(2, '0')}.example.com`;
const NODE = nodeName(0);
const POOL = '0f83f084-8080-413e-b558-b678e504836e';
const VMS_DN = 'ou=virtual machines,ou=virtualization,ou=services,o=stepping-stone,c=ch';
const VM_COUNT = 1_000;
const LEAVES_PER_VM = 5;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 500);
const POLL_IN_FLIGHT = 25;
const IDLE_MS = Number(process.env.BENCH_IDLE_MS ?? 60_000);
const GOAL_P95_MS = 20;
const GOAL_IDLE_PCT = 0.5;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const vmName = (i: number) => `bench-${String(i).padStart(4, '0')}`;
const vmDn = (i: number) => `sstVirtualMachine=${vmName(i)},${VMS_DN}`;
/** Leaf l of a VM: 2026-01-0<l+1>T00:00:00Z. */
const leafName = (l: number) => `2026010${l + 1}T000000Z`;
const leafDn = (i: number, l: number) => `ou=${leafName(l)},ou=backup,${vmDn(i)}`;

/** VM i runs on node i mod 20, so node-01 has VMs 0, 20, 40, …; its leaves wait in `initialized`, the others are finished. */
async function benchLdif(dir: string): Promise<string> {
  const out: string[] = [];
  for (let i = 0; i < VM_COUNT; i++) {
    out.push(ldifText(vmEntryLines(vmDn(i), { name: vmName(i), node: nodeName(i % NODES), pool: POOL })));
    out.push(`dn: ou=backup,${vmDn(i)}\nobjectClass: top\nobjectClass: organizationalUnit\nou: backup\n`);
    for (let l = 0; l < LEAVES_PER_VM; l++) {
      const mode = i % NODES === 0 ? 'initialized' : 'finished';
      out.push(`dn: ${leafDn(i, l)}\nobjectClass: top\nobjectClass: organizationalUnit\nobjectClass: sstProvisioning\nou: ${leafName(l)}\nsstProvisioningMode: ${mode}\nsstProvisioningState: 0\nsstProvisioningExecutionDate: 0\nsstProvisioningReturnValue: 0\n`);
    }
  }
  const file = path.join(dir, 'bench.ldif');
  await writeFile(file, out.join('\n'));
  return file;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

interface LatencyResult {
  name: string;
  samples: number[];
}

/** The node side: claims `snapshot` commands it hears about, like NodeDaemon does before running a step. */
class Claimer {
  readonly claimedAt = new Map<string, number>();
  private readonly waiters = new Map<string, () => void>();
  private readonly queue: KeyedWorkQueue;
  errors = 0;

  constructor(private readonly dir: LdapBackupDirectory) {
    this.queue = new KeyedWorkQueue((dn) => this.reconcile(dn), 4, () => {
      this.errors += 1;
    });
  }

  readonly onChange = (e: { kind: string; dn: string }): void => {
    if (e.kind === 'leaf') this.queue.add(e.dn, e.dn.split(',')[2] ?? e.dn);
  };

  private async reconcile(dn: string): Promise<void> {
    const leaf = await this.dir.getLeaf(dn);
    if (!leaf || leaf.mode !== 'snapshot') return;
    const vm = await this.dir.getVm(leaf.vm);
    if (!vm || vm.node !== NODE) return;
    if (await this.dir.casMode(dn, 'snapshot', 'snapshotting')) {
      const key = dn.toLowerCase();
      this.claimedAt.set(key, performance.now());
      this.waiters.get(key)?.();
    }
  }

  claimed(dn: string): Promise<void> {
    const key = dn.toLowerCase();
    if (this.claimedAt.has(key)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.set(key, resolve));
  }

  stop(): Promise<void> {
    return this.queue.stop();
  }
}

/** node-01's leaves: VMs 0, 20, 40, … × leaves 0–4. */
const nodeLeaves = Array.from({ length: VM_COUNT / NODES }, (_, k) => Array.from({ length: LEAVES_PER_VM }, (_, l) => leafDn(k * NODES, l))).flat();

async function measureLatency(name: string, feed: ChangeFeed, node: LdapBackupDirectory, control: LdapBackupDirectory, inFlight: number, intervalMs: number): Promise<LatencyResult> {
  const claimer = new Claimer(node);
  await feed.start(claimer.onChange);
  await sleep(500); // let the first poll / refresh and its resync settle
  const samples: number[] = [];
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= ROUNDS) return;
      const dn = nodeLeaves[i % nodeLeaves.length]!;
      if (intervalMs > 0) await sleep(Math.random() * intervalMs);
      else await sleep(5);
      const t0 = performance.now();
      if (!(await control.casMode(dn, 'initialized', 'snapshot'))) throw new Error(`${dn} was not initialized`);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), 30_000)));
      const outcome = await Promise.race([claimer.claimed(dn).then(() => 'ok' as const), timeout]);
      clearTimeout(timer);
      if (outcome === 'timeout') throw new Error(`${name}: ${dn} not claimed within 30 s`);
      samples.push(claimer.claimedAt.get(dn.toLowerCase())! - t0);
      claimer.claimedAt.delete(dn.toLowerCase());
      if (!(await control.casMode(dn, 'snapshotting', 'initialized'))) throw new Error(`${dn} could not be reset`);
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: inFlight }, worker));
  const took = performance.now() - started;
  await feed.stop();
  await claimer.stop();
  process.stderr.write(`  ${name}: ${samples.length} rounds in ${(took / 1000).toFixed(1)} s${claimer.errors ? `, ${claimer.errors} reconcile errors` : ''}\n`);
  return { name, samples };
}

/** utime+stime of a process in seconds (/proc counts in USER_HZ, 100 per second on Linux). */
async function processCpuSeconds(pid: number | undefined): Promise<number> {
  if (pid === undefined) return NaN;
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function measureIdle(name: string, feed: ChangeFeed, slapd: PrivateSlapd): Promise<{ name: string; consumerPct: number; slapdPct: number }> {
  await feed.start(() => undefined);
  await sleep(2_000); // past the initial refresh / first polls
  const cpu0 = process.cpuUsage();
  const slapd0 = await processCpuSeconds(slapd.pid);
  const t0 = performance.now();
  await sleep(IDLE_MS);
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const slapdCpu = (await processCpuSeconds(slapd.pid)) - slapd0;
  await feed.stop();
  return { name, consumerPct: (100 * (cpu.user + cpu.system)) / 1e6 / wall, slapdPct: (100 * slapdCpu) / wall };
}

const pad = (s: string, n: number) => s.padEnd(n);
const num = (x: number, digits = 1) => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');

async function main(): Promise<void> {
  const began = performance.now();
  const scratch = await import('node:fs/promises').then((f) => f.mkdtemp(path.join(os.tmpdir(), 'stoney-bench-')));
  const ldifFile = await benchLdif(scratch);
  process.stderr.write(`starting a private slapd with ${VM_COUNT} VMs and ${VM_COUNT * LEAVES_PER_VM} leaves …\n`);
  const slapd = await startSlapd({ ldifFiles: [ldifFile] });
  const connection = { url: slapd.url, bindDn: slapd.bindDn, passwordFile: slapd.passwordFile, baseDn: slapd.baseDn };
  const node = await connectDirectory(connection);
  const control = await connectDirectory(connection);
  const load0 = os.loadavg()[0]!;
  const syncFeed = () => new SyncReplChangeFeed({ ...connection, scope: { node: NODE }, stateFile: path.join(scratch, 'feed-state.json') });
  const pollFeed = (intervalMs: number) => new PollingChangeFeed(node, { node: NODE }, { intervalMs });
  try {
    process.stderr.write('latency …\n');
    const latency = [
      await measureLatency('sync (RFC 4533)', syncFeed(), node, control, 1, 0),
      await measureLatency('poll 1000 ms', pollFeed(1000), node, control, POLL_IN_FLIGHT, 1000),
      await measureLatency('poll 250 ms', pollFeed(250), node, control, POLL_IN_FLIGHT, 250),
    ];
    process.stderr.write(`idle, ${IDLE_MS / 1000} s each …\n`);
    const idle = [await measureIdle('sync (RFC 4533)', syncFeed(), slapd), await measureIdle('poll 1000 ms', pollFeed(1000), slapd)];

    const lines: string[] = [];
    lines.push('');
    lines.push(`Change feed benchmark — private slapd on loopback, ${VM_COUNT} VMs × ${LEAVES_PER_VM} leaves = ${VM_COUNT * LEAVES_PER_VM} leaves on ${NODES} nodes; measured: ${NODE} (${nodeLeaves.length} leaves)`);
    lines.push(`host: ${os.cpus().length} CPU(s) ${os.cpus()[0]?.model ?? ''}, Node ${process.version}, load average ${num(load0, 2)} → ${num(os.loadavg()[0]!, 2)}`);
    lines.push('');
    lines.push(`Reaction latency: control writes \`snapshot\` → node side has written \`snapshotting\`, ${ROUNDS} rounds per feed`);
    lines.push(`${pad('feed', 18)}${pad('p50 ms', 9)}${pad('p95 ms', 9)}${pad('p99 ms', 9)}${pad('max ms', 9)}goal p95 ≤ ${GOAL_P95_MS} ms`);
    for (const r of latency) {
      const s = [...r.samples].sort((a, b) => a - b);
      const p95 = percentile(s, 95);
      lines.push(`${pad(r.name, 18)}${pad(num(percentile(s, 50)), 9)}${pad(num(p95), 9)}${pad(num(percentile(s, 99)), 9)}${pad(num(s.at(-1) ?? NaN), 9)}${p95 <= GOAL_P95_MS ? 'met' : 'missed'}`);
    }
    lines.push('');
    lines.push(`Idle cost: node-side feed, ${VM_COUNT * LEAVES_PER_VM} leaves in the directory, no changes, ${IDLE_MS / 1000} s (% of one core)`);
    lines.push(`${pad('feed', 18)}${pad('consumer %', 13)}${pad('slapd %', 10)}goal consumer ≤ ${GOAL_IDLE_PCT} %`);
    for (const r of idle) {
      lines.push(`${pad(r.name, 18)}${pad(num(r.consumerPct, 3), 13)}${pad(num(r.slapdPct, 3), 10)}${r.consumerPct <= GOAL_IDLE_PCT ? 'met' : 'missed'}`);
    }
    lines.push('');
    lines.push(`total run time ${num((performance.now() - began) / 1000, 0)} s`);
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    await node.close();
    await control.close();
    await slapd.stop();
    await import('node:fs/promises').then((f) => f.rm(scratch, { recursive: true, force: true }));
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`benchmark failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exitCode = 1;
});
