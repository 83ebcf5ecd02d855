/**
 * npm run bench:copy — the retain/unretain copy (sparseCopy, sha256PerMiB included)
 * against `cp --sparse=always SRC DST && sync DST`, in one run, alternating.
 *
 * The file: COPY_BENCH_FILE if set (e.g. a real qcow2 image), else a
 * generated one of COPY_BENCH_MIB (default 1024) MiB in which every 64 MiB
 * hold 48 MiB of random data, 8 MiB of written zeros and an 8 MiB hole
 * (cp skips holes without reading them; written zeros both must read).
 * It lives in COPY_BENCH_DIR (default: a fresh directory in /var/tmp, on the
 * root filesystem like a backup target), and so do the copies.
 *
 * How the two are timed fairly: copyVsCp.ts. The source is in the page
 * cache before each copy; COPY_BENCH_DROP_CACHES=1 drops the page cache
 * before each instead, so that both read from disk. COPY_BENCH_ROUNDS
 * rounds (default 7).
 *
 * Prints each round, the median throughput of each, the ratio of the
 * medians, the spread of the per-round ratios, the rate of sha256 alone (the
 * ceiling for MiBs of data: MiBs of zeros are compared, not hashed), the
 * copy's peak RSS and that of an empty node process and of one that only
 * imports sparseCopy. Other people's work on the machine moves the figures:
 * the load average is printed with them. Exits 0 whatever the ratio (a benchmark reports), 1 on
 * error (a copy whose digest or content is wrong is an error).
 */
import { randomFillSync } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { run } from '../../src/hypervisor/exec.js';
import { copyVsCp, median } from './copyVsCp.js';

const MiB = 1024 * 1024;
const ROUNDS = Number(process.env['COPY_BENCH_ROUNDS'] ?? 7);
const GENERATED_MIB = Number(process.env['COPY_BENCH_MIB'] ?? 1024);
const DROP_CACHES = process.env['COPY_BENCH_DROP_CACHES'] === '1';

const fmt = (n: number, d = 0) => n.toFixed(d);
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

async function main(): Promise<void> {
  const dir = process.env['COPY_BENCH_DIR'] ?? (await mkdtemp(path.join('/var/tmp', 'stoney-copybench-')));
  const ownDir = process.env['COPY_BENCH_DIR'] === undefined;
  const generated = process.env['COPY_BENCH_FILE'] === undefined;
  const src = process.env['COPY_BENCH_FILE'] ?? path.join(dir, 'source.img');
  try {
    if (generated) {
      note(`writing a ${GENERATED_MIB} MiB source file in ${dir}`);
      await generate(src, GENERATED_MIB);
    }
    const fsType = (await run('findmnt', ['-n', '-o', 'FSTYPE', '--target', dir])).stdout.trim();
    const loadBefore = os.loadavg();
    const f = await copyVsCp(src, dir, {
      rounds: ROUNDS,
      dropCaches: DROP_CACHES,
      onRound: (i, cp, ours) =>
        note(`round ${i + 1} (${i % 2 === 0 ? 'cp first' : 'sparseCopy first'}): cp+sync ${fmt(cp)} ms, sparseCopy ${fmt(ours)} ms, ratio ${fmt(cp / ours, 2)}, load ${fmt(os.loadavg()[0] ?? NaN, 2)}`),
    });
    const loadAfter = os.loadavg();
    const r = [...f.roundRatios].sort((a, b) => a - b);
    out(`\ncopy of ${src} (${fmt(f.sizeMiB)} MiB, ${fmt(f.allocatedMiB)} MiB allocated) on ${fsType}, ${ROUNDS} rounds alternating, source ${DROP_CACHES ? 'read from disk (page cache dropped before each copy)' : 'in the page cache before each copy'}, both fsynced at the end`);
    out(`cp --sparse=always + sync: median ${fmt(median(f.cpMs))} ms = ${fmt(f.cpMiBs)} MiB/s (${f.cpMs.map((x) => fmt(x)).join(', ')} ms)`);
    out(`sparseCopy + sha256PerMiB: median ${fmt(median(f.oursMs))} ms = ${fmt(f.oursMiBs)} MiB/s (${f.oursMs.map((x) => fmt(x)).join(', ')} ms)`);
    out(`ratio of the medians: ${fmt(f.ratio, 2)}; per round (cp time / sparseCopy time): median ${fmt(median(r), 2)}, min ${fmt(r[0] ?? NaN, 2)}, max ${fmt(r[r.length - 1] ?? NaN, 2)}`);
    out(`sha256 alone (node:crypto, in memory, this moment): ${fmt(f.sha256MiBs)} MiB/s = ${fmt(f.sha256MiBs / f.cpMiBs, 2)} × cp's median — the copy's ceiling for MiBs of data (MiBs of zeros are compared, not hashed)`);
    out(`peak RSS of the copy process: ${fmt(f.rssMiB)} MiB; an empty node process: ${fmt(f.emptyRssMiB)} MiB; one that only imports sparseCopy: ${fmt(f.importRssMiB)} MiB`);
    out(`load average (1 min) before ${fmt(loadBefore[0] ?? NaN, 2)}, after ${fmt(loadAfter[0] ?? NaN, 2)}; ${os.cpus().length} CPUs`);
  } finally {
    if (generated) await rm(src, { force: true });
    if (ownDir) await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
