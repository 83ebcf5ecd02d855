import type { Logger } from 'pino';
import { startLineProcess } from './exec.js';
import { chainNode } from './QemuImg.js';
import { judgeProgress, STALL_MS, stalledMessage, type ProgressWatch } from './jobProgress.js';

export interface ChangedClustersCopy {
  /** the frozen qcow2 image: nothing writes it while this runs */
  source: string;
  /** persistent dirty bitmap in `source`: the clusters written since the base's moment */
  bitmap: string;
  /** an empty qcow2 image whose header names the base as backing (made by the caller) */
  target: string;
  /** the target's backing chain, top first, each layer pinned (no header followed) */
  targetBacking: readonly string[];
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** fail when the job copies nothing for this long (default 10 min) */
  noProgressMs?: number;
  /** bandwidth limit in bytes/s (0 or absent: none) */
  speedBytesPerSecond?: number;
  /** poll interval of the job's progress (default 1 s) */
  pollMs?: number;
  /**
   * Called before anything is written with the most the copy can write: the
   * clusters the bitmap marks, each rounded up to the target's 64 KiB
   * clusters (a bitmap finer than that marks a few KiB where a whole cluster
   * is written). A rejection ends the copy with the target untouched.
   */
  beforeCopy?: (bytesToWrite: number) => Promise<void>;
  logger?: Logger;
}

const JOB = 'stoney-changes';
const LONG_JOB_MS = 48 * 3600 * 1000;

interface QmpMessage {
  QMP?: unknown;
  id?: number;
  return?: unknown;
  error?: { class?: string; desc?: string };
  event?: string;
  data?: Record<string, unknown>;
}

/**
 * Copy exactly the clusters a dirty bitmap marks from a frozen image into a
 * new incremental image, inside QEMU: qemu-storage-daemon opens the source
 * read-only (shared with the VM's QEMU, which holds it as a backing file)
 * and runs a backup job with `sync: bitmap`. Unmarked clusters stay
 * unallocated in the target and read from its backing file — the previous
 * backup — so the target over its chain reads as the source, provided the
 * bitmap holds every write since that backup's moment (the caller's
 * judgement). The target is opened with its real backing chain, never
 * without: a zero cluster must be written as one, not skipped as "already
 * zero".
 */
export async function copyChangedClusters(o: ChangedClustersCopy): Promise<{ bytes: number }> {
  const source = { driver: 'qcow2', 'node-name': 'src', 'read-only': true, 'force-share': true, backing: null, file: { driver: 'file', filename: o.source, 'read-only': true, 'force-share': true } };
  const target = { driver: 'qcow2', 'node-name': 'dst', file: { driver: 'file', filename: o.target }, backing: chainNode(o.targetBacking) };
  // The daemon would outlive us (it ignores the end of its stdin) holding the
  // frozen image open into the merge's commit: the kernel kills it when we die.
  const proc = startLineProcess(
    'setpriv',
    ['--pdeathsig', 'SIGKILL', '--', 'qemu-storage-daemon', '--chardev', 'stdio,id=qmp', '--monitor', 'chardev=qmp,mode=control', '--blockdev', JSON.stringify(source), '--blockdev', JSON.stringify(target)],
    { timeoutMs: LONG_JOB_MS, ...(o.signal ? { signal: o.signal } : {}), ...(o.logger ? { logger: o.logger } : {}) },
  );
  const replies = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  let greeted!: () => void;
  const greeting = new Promise<void>((r) => (greeted = r));
  let jobEnded!: (outcome: { error?: string; bytes: number }) => void;
  const jobOutcome = new Promise<{ error?: string; bytes: number }>((r) => (jobEnded = r));
  proc.onLine((line) => {
    let m: QmpMessage;
    try {
      m = JSON.parse(line) as QmpMessage;
    } catch {
      return; // not QMP (QEMU prints warnings on stderr, but be lenient)
    }
    if (m.QMP !== undefined) greeted();
    else if (m.id !== undefined) {
      const waiter = replies.get(m.id);
      replies.delete(m.id);
      if (m.error) waiter?.reject(new Error(`QMP: ${m.error.desc ?? m.error.class ?? 'error'}`));
      else waiter?.resolve(m.return);
    } else if ((m.event === 'BLOCK_JOB_COMPLETED' || m.event === 'BLOCK_JOB_CANCELLED') && m.data?.['device'] === JOB) {
      const error = typeof m.data['error'] === 'string' ? m.data['error'] : m.event === 'BLOCK_JOB_CANCELLED' ? 'the job was cancelled' : undefined;
      jobEnded({ ...(error ? { error } : {}), bytes: Number(m.data['offset'] ?? 0) });
    }
  });
  const command = (execute: string, args?: Record<string, unknown>): Promise<unknown> =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      replies.set(id, { resolve, reject });
      proc.send(JSON.stringify({ execute, ...(args ? { arguments: args } : {}), id }));
    });
  const died = proc.ended.then((r) => {
    throw new Error(`qemu-storage-daemon ended (exit ${r.exitCode}) before the copy finished${r.stderr.trim() ? `: ${r.stderr.trim()}` : ''}`);
  });
  died.catch(() => undefined);
  let poll: NodeJS.Timeout | undefined;
  try {
    await Promise.race([greeting, died]);
    await Promise.race([command('qmp_capabilities'), died]);
    if (o.beforeCopy) await o.beforeCopy(await bytesToWrite(command, o.bitmap, o.source, died));
    await Promise.race([command('blockdev-backup', { 'job-id': JOB, device: 'src', target: 'dst', sync: 'bitmap', bitmap: o.bitmap, 'bitmap-mode': 'never', 'auto-finalize': true, 'auto-dismiss': true, ...(o.speedBytesPerSecond ? { speed: o.speedBytesPerSecond } : {}) }), died]);
    let watch: ProgressWatch | undefined;
    const stallMs = o.noProgressMs ?? STALL_MS;
    const stalled = new Promise<never>((_, reject) => {
      poll = setInterval(() => {
        command('query-jobs').then((jobs) => {
          const job = (jobs as { id?: string; 'current-progress'?: number; 'total-progress'?: number }[]).find((j) => j.id === JOB);
          if (!job) return;
          const done = job['current-progress'] ?? 0;
          o.onProgress?.(done, job['total-progress'] ?? 0);
          const r = judgeProgress(watch, { active: true, progress: done }, Date.now(), stallMs);
          watch = r.watch;
          if (r.verdict === 'stalled') reject(new Error(stalledMessage(`the copy of the changed clusters of ${o.source}`, stallMs, done)));
        }, () => undefined);
      }, o.pollMs ?? 1000);
    });
    const outcome = await Promise.race([jobOutcome, died, stalled]);
    if (outcome.error) throw new Error(`copying the changed clusters of ${o.source} failed: ${outcome.error}`);
    clearInterval(poll);
    await Promise.race([command('quit').catch(() => undefined), died.catch(() => undefined)]);
    const end = await proc.ended;
    if (end.exitCode !== 0) throw new Error(`qemu-storage-daemon exited with ${end.exitCode} after the copy${end.stderr.trim() ? `: ${end.stderr.trim()}` : ''}`);
    return { bytes: outcome.bytes };
  } finally {
    clearInterval(poll);
    proc.kill();
    await proc.ended;
  }
}

/** The target's cluster size: qemu-img create's default, which the caller's target is made with. */
const TARGET_CLUSTER = 64 * 1024;

/** What the bitmap of node `src` marks (its count, in bytes), rounded up to whole target clusters, as the daemon reports it. */
async function bytesToWrite(command: (execute: string, args?: Record<string, unknown>) => Promise<unknown>, bitmap: string, source: string, died: Promise<never>): Promise<number> {
  const nodes = (await Promise.race([command('query-named-block-nodes', { flat: true }), died])) as { 'node-name'?: string; 'dirty-bitmaps'?: { name?: string; count?: unknown; granularity?: unknown }[] }[];
  const b = nodes.find((n) => n['node-name'] === 'src')?.['dirty-bitmaps']?.find((x) => x.name === bitmap);
  const { count, granularity } = b ?? {};
  if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 0 || typeof granularity !== 'number' || !Number.isSafeInteger(granularity) || granularity <= 0) {
    throw new Error(`qemu-storage-daemon reports no usable dirty bitmap ${bitmap} in ${source}`);
  }
  return Math.ceil(count / granularity) * Math.max(granularity, TARGET_CLUSTER);
}
