/**
 * sparseCopy (sha256PerMiB included) against `cp --sparse=always SRC DST && sync
 * DST` of the same file, alternating; for bench:copy and any bench that
 * wants the same figure (bench:backup's copy of its VM's image).
 *
 * Fairness: before every copy, of either kind, the destination is removed,
 * `sync` flushes the machine's dirty data, and the source is read once so
 * that both copy from the page cache (or, with dropCaches, the page cache is
 * dropped so that both read from disk). Both end with the copy fsynced: cp
 * by `sync DST` (fsync), sparseCopy by its own fsync. cp's time includes
 * starting cp and sync (a few ms); sparseCopy's is measured around the call
 * in a child process of its own, which also gives its peak RSS. Rounds
 * alternate which one goes first. A copy whose digest or content is wrong
 * throws.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { open, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/hypervisor/exec.js';
import { fileDigest } from '../../src/node/fileDigest.js';

const MiB = 1024 * 1024;

export interface CopyVsCpFigures {
  sizeMiB: number;
  allocatedMiB: number;
  /** per round, ms */
  cpMs: number[];
  oursMs: number[];
  /** medians */
  cpMiBs: number;
  oursMiBs: number;
  /** oursMiBs / cpMiBs */
  ratio: number;
  /** cp time / sparseCopy time of each round */
  roundRatios: number[];
  /** peak RSS of the copy process, of an empty node process, of one that only imports sparseCopy */
  rssMiB: number;
  emptyRssMiB: number;
  importRssMiB: number;
  /** sha256 alone on this thread, in memory: the copy's ceiling for MiBs of data (MiBs of zeros are not hashed) */
  sha256MiBs: number;
}

export const median = (a: number[]): number => {
  const s = [...a].sort((x, y) => x - y);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

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

/** sha256 alone, on this thread, over 64 MiB in memory four times: the copy cannot go faster than this over MiBs of data. */
function sha256MiBs(): number {
  const buf = randomFillSync(Buffer.alloc(64 * MiB));
  const hash = createHash('sha256');
  const t = performance.now();
  for (let i = 0; i < 4; i++) hash.update(buf);
  hash.digest();
  return (4 * 64) / ((performance.now() - t) / 1000);
}

async function prepare(src: string, dst: string, dropCaches: boolean): Promise<void> {
  await rm(dst, { force: true });
  await run('sync', []);
  if (dropCaches) await writeFile('/proc/sys/vm/drop_caches', '3');
  else await readThrough(src);
}

async function timeCp(src: string, dst: string, dropCaches: boolean): Promise<number> {
  await prepare(src, dst, dropCaches);
  const t = performance.now();
  await run('cp', ['--sparse=always', src, dst]);
  await run('sync', [dst]);
  return performance.now() - t;
}

/** sparseCopy in a node process of its own: its time, its peak RSS, its digest (sha256PerMiB). */
async function timeOurs(copier: string, src: string, dst: string, dropCaches: boolean): Promise<{ ms: number; rssMiB: number; digest: string }> {
  await prepare(src, dst, dropCaches);
  const script = `const { sparseCopy } = await import(${JSON.stringify(copier)});
const t = performance.now(); const r = await sparseCopy(${JSON.stringify(src)}, ${JSON.stringify(dst)});
const ms = performance.now() - t;
${PEAK_RSS}
console.log(JSON.stringify({ ms, peakRssKiB, digest: r.sha256PerMiB }));`;
  const r = await run(process.execPath, ['--input-type=module', '-e', script], { timeoutMs: 600_000 });
  const o = JSON.parse(r.stdout) as { ms: number; peakRssKiB: number; digest: string };
  return { ms: o.ms, rssMiB: o.peakRssKiB / 1024, digest: o.digest };
}

/**
 * The peak RSS of the process itself, threads included (VmHWM). Not
 * process.resourceUsage().maxRSS: for a child of this process that starts
 * at the parent's RSS at fork time (Linux keeps the larger across exec).
 */
const PEAK_RSS = `const peakRssKiB = Number(/VmHWM:\\s+(\\d+) kB/.exec((await import('node:fs')).readFileSync('/proc/self/status', 'utf8'))?.[1]);`;

async function peakRssMiB(script: string): Promise<number> {
  const r = await run(process.execPath, ['--input-type=module', '-e', `${script}\n${PEAK_RSS}\nconsole.log(peakRssKiB);`], { timeoutMs: 60_000 });
  return Number(r.stdout.trim()) / 1024;
}

/** `rounds` rounds of each, alternating, copying `src` to a file in `dir` (removed afterwards); `onRound` hears of each. */
export async function copyVsCp(
  src: string,
  dir: string,
  opts: { rounds: number; dropCaches?: boolean; onRound?: (round: number, cpMs: number, oursMs: number) => void },
): Promise<CopyVsCpFigures> {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const copier = path.resolve(here, '../../src/node/sparseCopy.js');
  const dst = path.join(dir, 'copy-vs-cp.target');
  const dropCaches = opts.dropCaches ?? false;
  try {
    const st = await stat(src);
    const expected = await fileDigest(src);
    const cpMs: number[] = [];
    const oursMs: number[] = [];
    let rss = 0;
    for (let i = 0; i < opts.rounds; i++) {
      let cp: number;
      let o: Awaited<ReturnType<typeof timeOurs>>;
      if (i % 2 === 0) {
        cp = await timeCp(src, dst, dropCaches);
        o = await timeOurs(copier, src, dst, dropCaches);
      } else {
        o = await timeOurs(copier, src, dst, dropCaches);
        cp = await timeCp(src, dst, dropCaches);
      }
      if (o.digest !== expected.sha256PerMiB) throw new Error(`sparseCopy gave sha256PerMiB ${o.digest}, the file has ${expected.sha256PerMiB}`);
      cpMs.push(cp);
      oursMs.push(o.ms);
      rss = Math.max(rss, o.rssMiB);
      opts.onRound?.(i, cp, o.ms);
    }
    // The last copy must also be right, not only hashed right.
    const copied = await fileDigest(dst);
    if (copied.sha256PerMiB !== expected.sha256PerMiB || copied.size !== expected.size) throw new Error(`the copy's content differs from the source`);
    const sizeMiB = st.size / MiB;
    const cpMiBs = sizeMiB / (median(cpMs) / 1000);
    const oursMiBs = sizeMiB / (median(oursMs) / 1000);
    return {
      sizeMiB,
      allocatedMiB: (st.blocks * 512) / MiB,
      cpMs,
      oursMs,
      cpMiBs,
      oursMiBs,
      ratio: oursMiBs / cpMiBs,
      roundRatios: cpMs.map((c, i) => c / (oursMs[i] as number)),
      rssMiB: rss,
      emptyRssMiB: await peakRssMiB(''),
      importRssMiB: await peakRssMiB(`await import(${JSON.stringify(copier)});`),
      sha256MiBs: sha256MiBs(),
    };
  } finally {
    await rm(dst, { force: true });
  }
}
