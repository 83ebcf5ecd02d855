import { Worker } from 'node:worker_threads';
import type { HashBackend } from './fileDigest.js';

/**
 * The worker's whole program. Inline (eval) rather than a file of its own:
 * the same code then runs from dist/ and from the TypeScript sources under
 * vitest, and it loads nothing but node:crypto, so it starts small.
 * getBuiltinModule rather than require or import: eval code is CommonJS or
 * an ES module depending on the parent's --input-type.
 * Each message is a block [start, end) of the shared ring to hash, answered
 * with `start` once hashed; a number n, n zero bytes to hash; `null` asks
 * for the digest and starts the next hash.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = process.getBuiltinModule('node:worker_threads');
const { createHash } = process.getBuiltinModule('node:crypto');
const ring = Buffer.from(workerData);
const zeros = Buffer.alloc(1024 * 1024);
let hash = createHash('sha256');
parentPort.on('message', (m) => {
  if (m === null) {
    parentPort.postMessage(hash.digest('hex'));
    hash = createHash('sha256');
  } else if (typeof m === 'number') {
    for (let left = m; left > 0; left -= zeros.length) hash.update(zeros.subarray(0, Math.min(zeros.length, left)));
    parentPort.postMessage(0);
  } else {
    hash.update(ring.subarray(m[0], m[1]));
    parentPort.postMessage(m[0]);
  }
});
`;

interface Waiter {
  resolve: (answer: unknown) => void;
  reject: (err: Error) => void;
}

/**
 * sha256 of a stream of blocks, computed on a thread of its own: the hash
 * backend of a copy that runs while another copy of the same process hashes
 * on the main thread, so that concurrent copies do not share one core.
 *
 * The blocks live in a SharedArrayBuffer ring the copy reads into; nothing is
 * copied between the threads, and a block's slot may be reused once the
 * promise of its `update` has resolved. Blocks are hashed in the order of the
 * calls.
 *
 * A worker costs about 40–50 ms to start and 13 MiB of RSS, so only large
 * files use it (`sparseCopy` decides). `close` must always be called; it ends
 * the thread.
 */
export class Sha256Worker implements HashBackend {
  private readonly worker: Worker;
  /** Answers come back in the order the requests were posted. */
  private readonly waiting: Waiter[] = [];
  private failure: Error | undefined;

  constructor(ring: SharedArrayBuffer) {
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: ring });
    this.worker.on('message', (answer: unknown) => this.waiting.shift()?.resolve(answer));
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => this.fail(new Error(`the sha256 worker ended (exit code ${code})`)));
  }

  /** Hashes bytes [start, end) of the ring next; resolves when the slot may be reused. */
  update(start: number, end: number): Promise<void> {
    return this.ask([start, end]).then(() => undefined);
  }

  /** Hashes `n` zero bytes next (from the worker's own zeros, not the ring). */
  zeros(n: number): void {
    this.ask(n).catch(() => undefined);
  }

  /** The hex digest of everything hashed since the last digest; the next update starts a new hash. */
  async digest(): Promise<string> {
    return (await this.ask(null)) as string;
  }

  /** Ends the thread; what is still waiting is rejected. */
  async close(): Promise<void> {
    this.fail(new Error('the sha256 worker is closed'));
    await this.worker.terminate();
  }

  private ask(message: [number, number] | number | null): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.worker.postMessage(message);
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiting.splice(0)) w.reject(this.failure);
  }
}
