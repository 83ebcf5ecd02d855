/**
 * npm run bench:copy — the retain/unretain copy (sparseCopy, sha256 included)
 * against `cp --sparse=always SRC DST && sync DST`, in one run, alternating.
 *
 * The file: COPY_BENCH_FILE if set (e.g. a real qcow2 image), else a
 * generated one of COPY_BENCH_MIB (default 1024) MiB in which every 64 MiB
 * hold 48 MiB of random data, 8 MiB of written zeros and an 8 MiB hole
 * (cp skips holes without reading them; written zeros both must read).
 * It lives in COPY_BENCH_DIR (default: a fresh directory in /var/tmp, on the
 * root filesystem like a backup target), and so do the copies.
 *
 * Fairness: before every copy, of either kind, the destination is removed,
 * `sync` flushes the machine's dirty data, and the source is read once so
 * that both copy from the page cache (COPY_BENCH_DROP_CACHES=1 instead drops
 * the page cache before every copy, so that both read from disk). Both end
 * with the copy fsynced: cp by `sync DST` (fsync), sparseCopy by its own
 * fsync. cp's time includes starting cp and sync (a few ms); sparseCopy's
 * is measured around the call in a child process of its own, which also
 * gives its max RSS. Rounds alternate which one goes first.
 *
 * Prints each round, the median throughput of each, the ratio of the
 * medians, the spread of the per-round ratios, the rate of sha256 alone (the
 * copy's ceiling: it hashes every byte, holes included, on one core), the
 * copy's max RSS and that of an empty node process and of one that only
 * imports sparseCopy. Other
 * people's work on the machine moves the figures: the load average is
 * printed with them. Exits 0 whatever the ratio (a benchmark reports), 1 on
 * error (a copy whose sha256 or content is wrong is an error).
 */
import { createHash, randomFillSync } from 'node:crypto';
import { mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/hypervisor/exec.js';
import { fileSha256 } from '../../src/node/sparseCopy.js';

const MiB = 1024 * 1024;
const ROUNDS = Number(process.env['COPY_BENCH_ROUNDS'] ?? 7);
const GENERATED_MIB = Number(process.env['COPY_BENCH_MIB'] ?? 1024);
const DROP_CACHES = process.env['COPY_BENCH_DROP_CACHES'] === '1';

const fmt = (n: number, d = 0) => n.toFixed(d);
const median = (a: number[]) => {
  const s = [...a].sort((x, y) => x - y);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const out = (s: string) => process.stdout.write(`${s}\n`);
const note = (s: string) => process.stderr.write(`bench: ${s}\n`);

/** Data, written zeros and a hole in every 64 MiB, like a disk image with free space in it. */
async function generate(file: string, mib: number): Promise<void> {
  const h = await open(file, 'wx', 0o600);
  try {
    const chunk = Buffer.alloc(8 * MiB);
    for (let base = 0; base < mib * MiB; base += 64 * MiB) {
      for (let o = 0; o < 48 * MiB && base + o < mib * MiB; o += 8 * MiB) {
        randomFillSync(chunk);
        await h.write(chunk, 0, chunk.length, base + o);
      }
      chunk.fill(0);
      if (base + 48 * MiB < mib * MiB) await h.write(chunk, 0, chunk.length, base + 48 * MiB);
    }
    await h.truncate(mib * MiB);
    await h.sync();
  } finally {
    await h.close();
  }
}

/** Reads the whole file once, so that the copy after it finds it in the page cache. */
async function readThrough(file: string): Promise<void> {
  const h = await open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(8 * MiB);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await h.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      pos += bytesRead;
    }
  } finally {
    await h.close();
  }
}

/** sha256 alone, on this thread, over 64 MiB in memory four times: the copy cannot go faster than this. */
function sha256MiBs(): number {
  const buf = randomFillSync(Buffer.alloc(64 * MiB));
  const hash = createHash('sha256');
  const t = performance.now();
  for (let i = 0; i < 4; i++) hash.update(buf);
  hash.digest();
  return (4 * 64) / ((performance.now() - t) / 1000);
}

async function prepare(src: string, dst: string): Promise<void> {
  await rm(dst, { force: true });
  await run('sync', []);
  if (DROP_CACHES) await writeFile('/proc/sys/vm/drop_caches', '3');
  else await readThrough(src);
}

async function timeCp(src: string, dst: string): Promise<number> {
  await prepare(src, dst);
  const t = performance.now();
  await run('cp', ['--sparse=always', src, dst]);
  await run('sync', [dst]);
  return performance.now() - t;
}

/** sparseCopy in a node process of its own: its time, its peak RSS, its sha256. */
async function timeOurs(copier: string, src: string, dst: string): Promise<{ ms: number; rssMiB: number; sha256: string }> {
  await prepare(src, dst);
  const script = `const { sparseCopy } = await import(${JSON.stringify(copier)});
const t = performance.now(); const r = await sparseCopy(${JSON.stringify(src)}, ${JSON.stringify(dst)});
const ms = performance.now() - t;
${PEAK_RSS}
console.log(JSON.stringify({ ms, peakRssKiB, sha256: r.sha256 }));`;
  const r = await run(process.execPath, ['--input-type=module', '-e', script], { timeoutMs: 600_000 });
  const o = JSON.parse(r.stdout) as { ms: number; peakRssKiB: number; sha256: string };
  return { ms: o.ms, rssMiB: o.peakRssKiB / 1024, sha256: o.sha256 };
}

/**
 * The peak RSS of the process itself, threads included (VmHWM). Not
 * process.resourceUsage().maxRSS: for a child of this process that starts
 * at the parent's RSS at fork time (Linux keeps the larger across exec).
 */
const PEAK_RSS = `const peakRssKiB = Number(/VmHWM:\\s+(\\d+) kB/.exec((await import('node:fs')).readFileSync('/proc/self/status', 'utf8'))?.[1]);`;

async function maxRssMiB(script: string): Promise<number> {
  const r = await run(process.execPath, ['--input-type=module', '-e', `${script}\n${PEAK_RSS}\nconsole.log(peakRssKiB);`], { timeoutMs: 60_000 });
  return Number(r.stdout.trim()) / 1024;
}

async function main(): Promise<void> {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const copier = path.resolve(here, '../../src/node/sparseCopy.js');
  const dir = process.env['COPY_BENCH_DIR'] ?? (await mkdtemp(path.join('/var/tmp', 'stoney-copybench-')));
  const ownDir = process.env['COPY_BENCH_DIR'] === undefined;
  const src = process.env['COPY_BENCH_FILE'] ?? path.join(dir, 'source.img');
  const dst = path.join(dir, 'copy.img');
  const generated = process.env['COPY_BENCH_FILE'] === undefined;
  try {
    if (generated) {
      note(`writing a ${GENERATED_MIB} MiB source file in ${dir}`);
      await generate(src, GENERATED_MIB);
    }
    const fsType = (await run('findmnt', ['-n', '-o', 'FSTYPE', '--target', dir])).stdout.trim();
    const st = await stat(src);
    const expected = await fileSha256(src);
    const loadBefore = os.loadavg();
    const cps: number[] = [];
    const ours: number[] = [];
    const pairs: number[] = [];
    let rss = 0;
    for (let i = 0; i < ROUNDS; i++) {
      let cpMs: number;
      let o: Awaited<ReturnType<typeof timeOurs>>;
      if (i % 2 === 0) {
        cpMs = await timeCp(src, dst);
        o = await timeOurs(copier, src, dst);
      } else {
        o = await timeOurs(copier, src, dst);
        cpMs = await timeCp(src, dst);
      }
      if (o.sha256 !== expected.sha256) throw new Error(`sparseCopy gave sha256 ${o.sha256}, the file has ${expected.sha256}`);
      cps.push(cpMs);
      ours.push(o.ms);
      pairs.push(cpMs / o.ms);
      rss = Math.max(rss, o.rssMiB);
      note(`round ${i + 1} (${i % 2 === 0 ? 'cp first' : 'sparseCopy first'}): cp+sync ${fmt(cpMs)} ms, sparseCopy ${fmt(o.ms)} ms, ratio ${fmt(cpMs / o.ms, 2)}, load ${fmt(os.loadavg()[0] ?? NaN, 2)}`);
    }
    // The last copy must also be right, not only hashed right.
    const copied = await fileSha256(dst);
    if (copied.sha256 !== expected.sha256 || copied.size !== expected.size) throw new Error(`the copy's content differs from the source`);
    const hashMiBs = sha256MiBs();
    const emptyRss = await maxRssMiB('');
    const importRss = await maxRssMiB(`await import(${JSON.stringify(copier)});`);
    const loadAfter = os.loadavg();

    const sizeMiB = st.size / MiB;
    const cpMiBs = sizeMiB / (median(cps) / 1000);
    const oursMiBs = sizeMiB / (median(ours) / 1000);
    const sorted = [...pairs].sort((a, b) => a - b);
    out(`\ncopy of ${src} (${fmt(sizeMiB)} MiB, ${fmt((st.blocks * 512) / MiB)} MiB allocated) on ${fsType}, ${ROUNDS} rounds alternating, source ${DROP_CACHES ? 'read from disk (page cache dropped before each copy)' : 'in the page cache before each copy'}, both fsynced at the end`);
    out(`cp --sparse=always + sync: median ${fmt(median(cps))} ms = ${fmt(cpMiBs)} MiB/s (${cps.map((x) => fmt(x)).join(', ')} ms)`);
    out(`sparseCopy + sha256:       median ${fmt(median(ours))} ms = ${fmt(oursMiBs)} MiB/s (${ours.map((x) => fmt(x)).join(', ')} ms)`);
    out(`ratio of the medians: ${fmt(oursMiBs / cpMiBs, 2)}; per round (cp time / sparseCopy time): median ${fmt(median(pairs), 2)}, min ${fmt(sorted[0] ?? NaN, 2)}, max ${fmt(sorted[sorted.length - 1] ?? NaN, 2)}`);
    out(`sha256 alone (node:crypto, in memory, this moment): ${fmt(hashMiBs)} MiB/s — the most sparseCopy can reach, ${fmt(hashMiBs / cpMiBs, 2)} × cp's median`);
    out(`max RSS of the copy process: ${fmt(rss)} MiB; an empty node process: ${fmt(emptyRss)} MiB; one that only imports sparseCopy: ${fmt(importRss)} MiB`);
    out(`load average (1 min) before ${fmt(loadBefore[0] ?? NaN, 2)}, after ${fmt(loadAfter[0] ?? NaN, 2)}; ${os.cpus().length} CPUs`);
  } finally {
    await rm(dst, { force: true });
    if (generated) await rm(src, { force: true });
    if (ownDir) await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
