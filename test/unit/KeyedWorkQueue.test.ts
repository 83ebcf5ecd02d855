import { setImmediate as tick } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { KeyedWorkQueue } from '../../src/node/KeyedWorkQueue.js';

interface Gate {
  promise: Promise<void>;
  open: () => void;
  fail: (err: unknown) => void;
}

function gate(): Gate {
  let open!: () => void;
  let fail!: (err: unknown) => void;
  const promise = new Promise<void>((resolve, reject) => {
    open = resolve;
    fail = reject;
  });
  return { promise, open, fail };
}

/** Let queued promise callbacks and the queue's bookkeeping run. */
async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await tick();
}

/**
 * A worker whose every run waits for the test to release it, recording the
 * order of starts and ends and how many runs overlap.
 */
function controlledWorker() {
  const starts: string[] = [];
  const ends: string[] = [];
  const waiting = new Map<string, Gate[]>();
  const active = new Set<string>();
  let maxActive = 0;
  const worker = async (key: string): Promise<void> => {
    starts.push(key);
    active.add(key);
    maxActive = Math.max(maxActive, active.size);
    const g = gate();
    waiting.set(key, [...(waiting.get(key) ?? []), g]);
    try {
      await g.promise;
    } finally {
      active.delete(key);
      ends.push(key);
    }
  };
  /** Release the oldest run of `key` (optionally failing it). */
  const release = async (key: string, err?: unknown): Promise<void> => {
    const gates = waiting.get(key) ?? [];
    const g = gates.shift();
    if (!g) throw new Error(`${key} is not running`);
    if (err === undefined) g.open();
    else g.fail(err);
    await settle();
  };
  return { worker, release, starts, ends, active: () => [...active].sort(), maxActive: () => maxActive };
}

const noErrors = (key: string, err: unknown) => {
  throw new Error(`unexpected error for ${key}: ${String(err)}`);
};

describe('KeyedWorkQueue', () => {
  it('runs a key queued several times while pending only once', async () => {
    const w = controlledWorker();
    const q = new KeyedWorkQueue(w.worker, 1, noErrors);
    q.add('blocker', 'vm0');
    q.add('a', 'vm1');
    q.add('a', 'vm1');
    q.add('a', 'vm1');
    await settle();
    expect(w.starts).toEqual(['blocker']);
    await w.release('blocker');
    expect(w.starts).toEqual(['blocker', 'a']);
    await w.release('a');
    await q.idle();
    expect(w.starts).toEqual(['blocker', 'a']);
    expect(w.ends).toEqual(['blocker', 'a']);
  });

  it('runs a key added while it runs exactly once more, after the running one', async () => {
    const w = controlledWorker();
    const q = new KeyedWorkQueue(w.worker, 4, noErrors);
    q.add('a', 'vm1');
    await settle();
    expect(w.starts).toEqual(['a']);
    q.add('a', 'vm1');
    q.add('a', 'vm1');
    q.add('a', 'vm1');
    await settle();
    expect(w.starts).toEqual(['a']); // not while the first run is still going
    await w.release('a');
    expect(w.starts).toEqual(['a', 'a']);
    expect(w.ends).toEqual(['a']);
    await w.release('a');
    await q.idle();
    expect(w.starts).toEqual(['a', 'a']);
    expect(w.maxActive()).toBe(1);
  });

  it('never runs two keys of one group at once, and runs other groups meanwhile', async () => {
    const w = controlledWorker();
    const q = new KeyedWorkQueue(w.worker, 4, noErrors);
    q.add('vm1/leafA', 'vm1');
    q.add('vm1/leafB', 'vm1');
    q.add('vm2/leafA', 'vm2');
    await settle();
    expect(w.active()).toEqual(['vm1/leafA', 'vm2/leafA']);
    await w.release('vm2/leafA');
    expect(w.active()).toEqual(['vm1/leafA']); // vm1/leafB still waits for its group
    await w.release('vm1/leafA');
    expect(w.active()).toEqual(['vm1/leafB']);
    await w.release('vm1/leafB');
    await q.idle();
    expect(w.starts).toEqual(['vm1/leafA', 'vm2/leafA', 'vm1/leafB']);
  });

  it('does not let a busy group block keys of other groups queued behind it', async () => {
    const w = controlledWorker();
    const q = new KeyedWorkQueue(w.worker, 2, noErrors);
    q.add('a1', 'A');
    q.add('a2', 'A');
    q.add('b1', 'B');
    await settle();
    expect(w.active()).toEqual(['a1', 'b1']);
    await w.release('a1');
    await w.release('b1');
    await w.release('a2');
    await q.idle();
  });

  it('respects the concurrency limit and runs every key', async () => {
    let active = 0;
    let maxActive = 0;
    const done: string[] = [];
    const q = new KeyedWorkQueue(
      async (key) => {
        active += 1;
        maxActive = Math.max(maxActive, active);
        await settle(1 + (key.charCodeAt(0) % 3));
        active -= 1;
        done.push(key);
      },
      3,
      noErrors,
    );
    const keys = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'];
    for (const k of keys) q.add(k, `vm-${k}`);
    await q.idle();
    expect(maxActive).toBe(3);
    expect([...done].sort()).toEqual(keys);
  });

  it('runs one at a time with concurrency 1, in the order added', async () => {
    const w = controlledWorker();
    const q = new KeyedWorkQueue(w.worker, 1, noErrors);
    for (const k of ['c', 'a', 'b']) q.add(k, k);
    await settle();
    for (const k of ['c', 'a', 'b']) {
      expect(w.active()).toEqual([k]);
      await w.release(k);
    }
    await q.idle();
    expect(w.starts).toEqual(['c', 'a', 'b']);
    expect(w.maxActive()).toBe(1);
  });

  it('hands errors to onError and keeps going', async () => {
    const errors: [string, unknown][] = [];
    const ran: string[] = [];
    const boom = new Error('boom');
    const q = new KeyedWorkQueue(
      async (key) => {
        ran.push(key);
        await tick();
        if (key === 'bad') throw boom;
      },
      1,
      (key, err) => errors.push([key, err]),
    );
    q.add('bad', 'vm1');
    q.add('good', 'vm1');
    q.add('other', 'vm2');
    await q.idle();
    expect(errors).toEqual([['bad', boom]]);
    expect(ran).toEqual(['bad', 'good', 'other']);
    // The failed key's group is free again and the key can run again.
    q.add('bad', 'vm1');
    await q.idle();
    expect(ran).toEqual(['bad', 'good', 'other', 'bad']);
    expect(errors).toHaveLength(2);
  });

  it('reruns a key added while a failing run of it was going', async () => {
    const w = controlledWorker();
    const errors: string[] = [];
    const q = new KeyedWorkQueue(w.worker, 2, (key) => errors.push(key));
    q.add('a', 'vm1');
    await settle();
    q.add('a', 'vm1');
    await w.release('a', new Error('first run failed'));
    expect(errors).toEqual(['a']);
    expect(w.starts).toEqual(['a', 'a']);
    await w.release('a');
    await q.idle();
    expect(errors).toEqual(['a']);
  });

  describe('idle()', () => {
    it('resolves at once when nothing runs or waits', async () => {
      const q = new KeyedWorkQueue(async () => {}, 1, noErrors);
      let resolved = false;
      void q.idle().then(() => (resolved = true));
      await settle(1);
      expect(resolved).toBe(true);
    });

    it('resolves only when running, pending and rerun work has all ended', async () => {
      const w = controlledWorker();
      const q = new KeyedWorkQueue(w.worker, 1, noErrors);
      q.add('a', 'vm1');
      q.add('b', 'vm2');
      await settle();
      q.add('a', 'vm1'); // rerun
      let idle = false;
      void q.idle().then(() => (idle = true));
      await w.release('a');
      expect(idle).toBe(false);
      await w.release('b');
      expect(idle).toBe(false);
      expect(w.active()).toEqual(['a']);
      await w.release('a');
      expect(idle).toBe(true);
      expect(w.starts).toEqual(['a', 'b', 'a']);
    });
  });

  describe('stop()', () => {
    it('waits for running work, drops pending work and reruns, and ignores later adds', async () => {
      const w = controlledWorker();
      const q = new KeyedWorkQueue(w.worker, 2, noErrors);
      q.add('a', 'vm1');
      q.add('b', 'vm2');
      q.add('c', 'vm3'); // pending: concurrency 2
      q.add('a2', 'vm1'); // pending: group busy
      await settle();
      q.add('a', 'vm1'); // rerun of a running key
      let stopped = false;
      const stopping = q.stop().then(() => (stopped = true));
      await settle();
      expect(stopped).toBe(false);
      q.add('d', 'vm4');
      await w.release('a');
      expect(stopped).toBe(false); // b still runs
      await w.release('b');
      await stopping;
      expect(stopped).toBe(true);
      expect(w.starts).toEqual(['a', 'b']);
      expect(w.ends).toEqual(['a', 'b']);
      q.add('e', 'vm5');
      await settle();
      expect(w.starts).toEqual(['a', 'b']);
      await q.idle();
    });

    it('resolves at once when nothing runs', async () => {
      const q = new KeyedWorkQueue(async () => {}, 1, noErrors);
      await q.stop();
      q.add('a', 'vm1');
      await q.idle();
    });

    it('waits for a failing run too, and reports its error', async () => {
      const w = controlledWorker();
      const errors: string[] = [];
      const q = new KeyedWorkQueue(w.worker, 1, (key) => errors.push(key));
      q.add('a', 'vm1');
      await settle();
      const stopping = q.stop();
      await w.release('a', new Error('fail'));
      await stopping;
      expect(errors).toEqual(['a']);
    });
  });
});
