import { describe, expect, it } from 'vitest';
import { batchDone, decideBatch, defaultBatchPolicy, type BatchPolicy } from '../../src/control/decideBatch.js';
import type { LeafEntry } from '../../src/directory/types.js';
import { nodeClaim, nodeReport } from '../../workflows/backupMachine.js';
import { briefWrites, leafEntry } from '../helpers/leafEntries.js';

const LEAF = '20240301T020000Z';
const T0 = new Date('2024-03-01T02:00:00Z');
const policy: BatchPolicy = { mergeConcurrency: 1, claimTimeoutMs: 60_000, stepTimeoutMs: 3_600_000 };

function dnOf(vm: string): string {
  return `ou=${LEAF},ou=backup,sstVirtualMachine=${vm},ou=virtual machines,ou=virtualization,ou=services,o=test`;
}

function leaf(vm: string, mode: string, over: Partial<LeafEntry> = {}): LeafEntry {
  return leafEntry(vm, LEAF, mode, T0, over);
}

const brief = briefWrites;

const later = (ms: number) => new Date(T0.getTime() + ms);

describe('decideBatch: the snapshot phase', () => {
  it('walks a batch of 3 from initialize through initialized to snapshot, handing snapshot over', () => {
    const leaves = [leaf('kvm-c', 'initialize'), leaf('kvm-a', 'initialize'), leaf('kvm-b', 'initialize')];
    const first = decideBatch(leaves, policy, T0);
    expect(brief(first)).toEqual([
      'kvm-a: initialize → initialized (now)',
      'kvm-b: initialize → initialized (now)',
      'kvm-c: initialize → initialized (now)',
    ]);
    expect(first[0]).toEqual({ dn: dnOf('kvm-a'), vm: 'kvm-a', expected: 'initialize', next: 'initialized', state: 'now', reason: 'control.initialized' });

    const second = decideBatch(leaves.map((l) => ({ ...l, mode: 'initialized' })), policy, T0);
    expect(brief(second)).toEqual([
      'kvm-a: initialized → snapshot (handover)',
      'kvm-b: initialized → snapshot (handover)',
      'kvm-c: initialized → snapshot (handover)',
    ]);
    expect(second[2]).toEqual({ dn: dnOf('kvm-c'), vm: 'kvm-c', expected: 'initialized', next: 'snapshot', state: 'handover', reason: 'control.snapshot' });
  });

  it('writes nothing while the nodes have the snapshot command or work on it', () => {
    const leaves = [leaf('kvm-a', 'snapshot'), leaf('kvm-b', 'snapshotting'), leaf('kvm-c', 'snapshot')];
    expect(decideBatch(leaves, policy, later(1000))).toEqual([]);
  });

  it.each(['initialize', 'initialized', 'snapshot', 'snapshotting'])('merges nobody while one leaf is still in %s', (mode) => {
    const leaves = [leaf('kvm-a', 'snapshotted', { returnValue: 0 }), leaf('kvm-b', 'snapshotted', { returnValue: 0 }), leaf('kvm-c', mode)];
    const writes = decideBatch(leaves, { ...policy, mergeConcurrency: 10 }, T0);
    expect(writes.filter((w) => w.next === 'merge')).toEqual([]);
    // The late leaf itself still moves on where the control side owns the next step.
    const own = { initialize: ['kvm-c: initialize → initialized (now)'], initialized: ['kvm-c: initialized → snapshot (handover)'] } as Record<string, string[]>;
    expect(brief(writes)).toEqual(own[mode] ?? []);
  });
});

describe('decideBatch: merge and retain', () => {
  const allSnapshotted = () => [
    leaf('kvm-c', 'snapshotted', { returnValue: 0 }),
    leaf('kvm-a', 'snapshotted', { returnValue: 0 }),
    leaf('kvm-b', 'snapshotted', { returnValue: 0 }),
  ];

  it('merges one leaf at a time, the first by VM name, with the step handed over', () => {
    const writes = decideBatch(allSnapshotted(), policy, T0);
    expect(writes).toEqual([{ dn: dnOf('kvm-a'), vm: 'kvm-a', expected: 'snapshotted', next: 'merge', state: 'handover', reason: 'control.merge' }]);
  });

  it('merges mergeConcurrency leaves at a time', () => {
    expect(brief(decideBatch(allSnapshotted(), { ...policy, mergeConcurrency: 2 }, T0))).toEqual([
      'kvm-a: snapshotted → merge (handover)',
      'kvm-b: snapshotted → merge (handover)',
    ]);
    expect(brief(decideBatch(allSnapshotted(), { ...policy, mergeConcurrency: 5 }, T0))).toEqual([
      'kvm-a: snapshotted → merge (handover)',
      'kvm-b: snapshotted → merge (handover)',
      'kvm-c: snapshotted → merge (handover)',
    ]);
  });

  it.each(['merge', 'merging', 'merged', 'retain', 'retaining'])('counts a leaf in %s against mergeConcurrency', (mode) => {
    const leaves = [leaf('kvm-z', mode, { returnValue: 0 }), leaf('kvm-a', 'snapshotted', { returnValue: 0 }), leaf('kvm-b', 'snapshotted', { returnValue: 0 })];
    expect(decideBatch(leaves, policy, T0).filter((w) => w.next === 'merge')).toEqual([]);
    expect(brief(decideBatch(leaves, { ...policy, mergeConcurrency: 2 }, T0)).filter((s) => s.includes('→ merge'))).toEqual([
      'kvm-a: snapshotted → merge (handover)',
    ]);
  });

  it('hands retain over after merged, and finishes (state now) after retained', () => {
    const leaves = [leaf('kvm-a', 'merged', { returnValue: 0 }), leaf('kvm-b', 'retained', { returnValue: 0 }), leaf('kvm-c', 'finished', { returnValue: 0 })];
    expect(decideBatch(leaves, policy, T0)).toEqual([
      { dn: dnOf('kvm-a'), vm: 'kvm-a', expected: 'merged', next: 'retain', state: 'handover', reason: 'control.retain' },
      { dn: dnOf('kvm-b'), vm: 'kvm-b', expected: 'retained', next: 'finished', state: 'now', reason: 'control.finish' },
    ]);
  });

  it('never merges a failed snapshot, and merges the others', () => {
    const leaves = [leaf('kvm-a', 'snapshotted', { returnValue: 5 }), leaf('kvm-b', 'snapshotted', { returnValue: 0 })];
    expect(brief(decideBatch(leaves, { ...policy, mergeConcurrency: 5 }, T0))).toEqual(['kvm-b: snapshotted → merge (handover)']);
    expect(decideBatch([leaf('kvm-a', 'snapshotted', { returnValue: 5 })], policy, later(10 * 3_600_000))).toEqual([]);
  });

  it('does not count a failed snapshot against mergeConcurrency', () => {
    const leaves = [leaf('kvm-a', 'snapshotted', { returnValue: 5 }), leaf('kvm-b', 'snapshotted', { returnValue: 0 })];
    expect(brief(decideBatch(leaves, policy, T0))).toEqual(['kvm-b: snapshotted → merge (handover)']);
  });

  // A failed merge ends that VM's backup where it failed ("merged" with a non-zero
  // return value is done); it must not hold a merge slot for ever, or the rest of
  // the batch is never merged and the batch never ends.
  it.each([
    ['a failed merge', 11],
    ['a timed-out merge', 49],
  ])('does not let %s hold a merge slot', (_what, rv) => {
    const leaves = [leaf('kvm-a', 'merged', { returnValue: rv }), leaf('kvm-b', 'snapshotted', { returnValue: 0 }), leaf('kvm-c', 'snapshotted', { returnValue: 0 })];
    expect(brief(decideBatch(leaves, policy, T0))).toEqual(['kvm-b: snapshotted → merge (handover)']);
  });

  it('writes nothing for finished, failed and unknown leaves', () => {
    const leaves = [
      leaf('kvm-a', 'finished', { returnValue: 0 }),
      leaf('kvm-b', 'retained', { returnValue: 7 }),
      leaf('kvm-c', 'bogus'),
      leaf('kvm-d', 'unretainSmallFiles'),
    ];
    expect(decideBatch(leaves, policy, later(100 * 3_600_000))).toEqual([]);
  });

  it('gives the same writes when run twice on the same state', () => {
    const leaves = [leaf('kvm-b', 'snapshotted', { returnValue: 0 }), leaf('kvm-a', 'merged', { returnValue: 0 }), leaf('kvm-c', 'initialize')];
    expect(decideBatch(leaves, policy, T0)).toEqual(decideBatch(leaves, policy, T0));
    expect(leaves.map((l) => l.mode)).toEqual(['snapshotted', 'merged', 'initialize']);
  });
});

describe('decideBatch: merge and retain limited per node', () => {
  // Two nodes: a and c on n1, b and d on n2.
  const nodes: Record<string, string> = { 'kvm-a': 'n1', 'kvm-c': 'n1', 'kvm-b': 'n2', 'kvm-d': 'n2' };
  const nodeOf = (vm: string) => nodes[vm] ?? '?';
  const snapshotted = (vm: string) => leaf(vm, 'snapshotted', { returnValue: 0 });

  it('merges the first VM (by name) of every node at once with mergeConcurrency 1', () => {
    const leaves = ['kvm-d', 'kvm-c', 'kvm-b', 'kvm-a'].map(snapshotted);
    expect(brief(decideBatch(leaves, policy, T0, new Set(), nodeOf))).toEqual([
      'kvm-a: snapshotted → merge (handover)',
      'kvm-b: snapshotted → merge (handover)',
    ]);
  });

  it('lets a merge on one node hold only that node\'s slot', () => {
    const leaves = [leaf('kvm-a', 'merging', { returnValue: 0 }), snapshotted('kvm-b'), snapshotted('kvm-c'), snapshotted('kvm-d')];
    expect(brief(decideBatch(leaves, policy, T0, new Set(), nodeOf))).toEqual(['kvm-b: snapshotted → merge (handover)']);
    const n2Busy = [leaf('kvm-a', 'merging', { returnValue: 0 }), leaf('kvm-b', 'retain', { returnValue: 0 }), snapshotted('kvm-c'), snapshotted('kvm-d')];
    expect(decideBatch(n2Busy, policy, T0, new Set(), nodeOf)).toEqual([]);
  });

  it('still merges nobody on any node while a leaf of the batch is in its snapshot', () => {
    const leaves = [snapshotted('kvm-a'), snapshotted('kvm-b'), leaf('kvm-d', 'snapshotting')];
    expect(decideBatch(leaves, { ...policy, mergeConcurrency: 5 }, T0, new Set(), nodeOf)).toEqual([]);
  });

  it('counts the whole batch as one node without nodeOf (the seed\'s rule)', () => {
    const leaves = ['kvm-d', 'kvm-c', 'kvm-b', 'kvm-a'].map(snapshotted);
    expect(brief(decideBatch(leaves, policy, T0))).toEqual(['kvm-a: snapshotted → merge (handover)']);
  });
});

describe('decideBatch: timeouts', () => {
  it.each([
    ['snapshot', 'snapshotted'],
    ['merge', 'merged'],
    ['retain', 'retained'],
  ])('fails an unclaimed %s only after the claim timeout', (mode, done) => {
    const l = [leaf('kvm-a', mode)];
    expect(decideBatch(l, policy, later(policy.claimTimeoutMs))).toEqual([]);
    const writes = decideBatch(l, policy, later(policy.claimTimeoutMs + 1));
    expect(writes).toEqual([
      { dn: dnOf('kvm-a'), vm: 'kvm-a', expected: mode, next: done, state: 'now', returnValue: 49, reason: `no node claimed ${mode} within 60 s` },
    ]);
  });

  it.each([
    ['snapshotting', 'snapshotted'],
    ['merging', 'merged'],
    ['retaining', 'retained'],
  ])('fails %s without a report only after the step timeout, not the claim timeout', (mode, done) => {
    const l = [leaf('kvm-a', mode)];
    expect(decideBatch(l, policy, later(policy.claimTimeoutMs + 1))).toEqual([]);
    expect(decideBatch(l, policy, later(policy.stepTimeoutMs))).toEqual([]);
    expect(decideBatch(l, policy, later(policy.stepTimeoutMs + 1))).toEqual([
      { dn: dnOf('kvm-a'), vm: 'kvm-a', expected: mode, next: done, state: 'now', returnValue: 49, reason: `no report for ${mode} within 3600 s` },
    ]);
  });

  it('never times out a leaf without modifiedAt', () => {
    expect(decideBatch([leaf('kvm-a', 'snapshot', { modifiedAt: undefined }), leaf('kvm-b', 'merging', { modifiedAt: undefined })], policy, later(1e12))).toEqual([]);
  });

  it('does not time out modes the control side owns', () => {
    const far = later(1000 * policy.stepTimeoutMs);
    expect(brief(decideBatch([leaf('kvm-a', 'initialized')], policy, far))).toEqual(['kvm-a: initialized → snapshot (handover)']);
    expect(brief(decideBatch([leaf('kvm-a', 'merged', { returnValue: 0 })], policy, far))).toEqual(['kvm-a: merged → retain (handover)']);
  });

  it('times out one stuck snapshot while holding back the merges of the others', () => {
    const leaves = [
      leaf('kvm-a', 'snapshotted', { returnValue: 0, modifiedAt: later(0) }),
      leaf('kvm-b', 'snapshot', { modifiedAt: later(0) }),
    ];
    const now = later(policy.claimTimeoutMs + 1);
    expect(brief(decideBatch(leaves, policy, now))).toEqual(['kvm-b: snapshot → snapshotted (now, 49)']);
    // After the timeout is written, the batch goes on without kvm-b.
    const after = [leaves[0] as LeafEntry, leaf('kvm-b', 'snapshotted', { returnValue: 49, modifiedAt: now })];
    expect(brief(decideBatch(after, policy, now))).toEqual(['kvm-a: snapshotted → merge (handover)']);
    expect(batchDone(after)).toBe(false);
  });

  it('uses the default policy: 5 min to claim, 6 h to report', () => {
    expect(defaultBatchPolicy).toEqual({ mergeConcurrency: 1, claimTimeoutMs: 300_000, stepTimeoutMs: 21_600_000 });
    expect(decideBatch([leaf('kvm-a', 'snapshot')], defaultBatchPolicy, later(300_000))).toEqual([]);
    expect(decideBatch([leaf('kvm-a', 'snapshot')], defaultBatchPolicy, later(300_001))).toHaveLength(1);
  });
});

describe('batchDone', () => {
  it('is true when every leaf finished', () => {
    expect(batchDone([leaf('kvm-a', 'finished', { returnValue: 0 }), leaf('kvm-b', 'finished', { returnValue: 0 })])).toBe(true);
  });

  it('is true when every leaf finished or failed where it stopped', () => {
    expect(
      batchDone([
        leaf('kvm-a', 'finished', { returnValue: 0 }),
        leaf('kvm-b', 'snapshotted', { returnValue: 5 }),
        leaf('kvm-c', 'merged', { returnValue: 11 }),
        leaf('kvm-d', 'retained', { returnValue: 49 }),
      ]),
    ).toBe(true);
  });

  it.each(['initialize', 'initialized', 'snapshot', 'snapshotting', 'merge', 'merging', 'retain', 'retaining'])('is false while a leaf is in %s', (mode) => {
    expect(batchDone([leaf('kvm-a', 'finished', { returnValue: 0 }), leaf('kvm-b', mode)])).toBe(false);
  });

  it.each(['snapshotted', 'merged', 'retained'])('is false while a successful leaf waits in %s', (mode) => {
    expect(batchDone([leaf('kvm-a', mode, { returnValue: 0 })])).toBe(false);
    expect(batchDone([leaf('kvm-a', mode, { returnValue: undefined })])).toBe(false);
  });

  it('treats unknown modes as done (nothing the backup protocol can drive)', () => {
    expect(batchDone([leaf('kvm-a', 'bogus'), leaf('kvm-b', 'unretainSmallFiles'), leaf('kvm-c', 'finished', { returnValue: 0 })])).toBe(true);
    expect(batchDone([leaf('kvm-a', 'bogus'), leaf('kvm-b', 'snapshotted', { returnValue: 0 })])).toBe(false);
  });
});

/**
 * A whole batch in memory: the control side runs decideBatch and applies the
 * writes as compare-and-swaps; each node claims a command or reports a
 * working mode on its turn (every `pace` rounds), as the workflow allows.
 */
function simulate(opts: {
  vms: string[];
  policy: BatchPolicy;
  /** node turns happen every `pace[vm]` rounds (default 1) */
  pace?: Record<string, number>;
  /** return value a node reports for (vm, working mode) */
  result?: (vm: string, working: string) => number;
  maxRounds?: number;
}) {
  const leaves = opts.vms.map((vm) => leaf(vm, 'initialize', { state: '0', modifiedAt: T0 }));
  const mergeOrder: string[] = [];
  const violations: string[] = [];
  let maxConcurrentMergeRetain = 0;
  let now = T0.getTime();
  let rounds = 0;
  const stamp = () => new Date(now).toISOString().replace(/[-:]/g, '').replace(/\.\d+/, '');
  while (!batchDone(leaves)) {
    rounds += 1;
    if (rounds > (opts.maxRounds ?? 200)) throw new Error(`batch did not end: ${leaves.map((l) => `${l.vm}=${l.mode}/${l.returnValue}`).join(' ')}`);
    now += 1000;
    // Control turn.
    const writes = decideBatch(leaves, opts.policy, new Date(now));
    for (const w of writes) {
      const l = leaves.find((x) => x.dn === w.dn);
      if (!l || l.mode !== w.expected) throw new Error(`CAS lost for ${w.vm}: ${w.expected} → ${w.next}`);
      if (w.next === 'merge') {
        const early = leaves.filter((x) => ['initialize', 'initialized', 'snapshot', 'snapshotting'].includes(x.mode));
        if (early.length > 0) violations.push(`${w.vm} merged while ${early.map((x) => `${x.vm}=${x.mode}`).join(',')}`);
        mergeOrder.push(w.vm);
      }
      l.mode = w.next;
      l.state = w.state === 'handover' ? '0' : stamp();
      if (w.returnValue !== undefined) l.returnValue = w.returnValue;
      l.modifiedAt = new Date(now);
    }
    const busy = leaves.filter((x) => ['merge', 'merging', 'merged', 'retain', 'retaining'].includes(x.mode) && (x.returnValue ?? 0) === 0).length;
    maxConcurrentMergeRetain = Math.max(maxConcurrentMergeRetain, busy);
    // Node turns.
    for (const l of leaves) {
      if (rounds % (opts.pace?.[l.vm] ?? 1) !== 0) continue;
      const claimed = nodeClaim(l.mode);
      if (claimed) {
        if (l.state !== '0') violations.push(`${l.vm}: command ${l.mode} not handed over with state 0`);
        l.mode = claimed;
        l.modifiedAt = new Date(now);
        continue;
      }
      const rv = opts.result?.(l.vm, l.mode) ?? 0;
      const reported = nodeReport(l.mode, rv);
      if (reported) {
        l.mode = reported;
        l.returnValue = rv;
        l.state = stamp();
        l.modifiedAt = new Date(now);
      }
    }
  }
  return { leaves, mergeOrder, violations, maxConcurrentMergeRetain, rounds };
}

describe('a whole batch, simulated', () => {
  it('snapshots all three, then merges and retains them one at a time in VM-name order', () => {
    const r = simulate({ vms: ['kvm-003', 'kvm-001', 'kvm-002'], policy, pace: { 'kvm-001': 1, 'kvm-002': 2, 'kvm-003': 5 } });
    expect(r.violations).toEqual([]);
    expect(r.mergeOrder).toEqual(['kvm-001', 'kvm-002', 'kvm-003']);
    expect(r.maxConcurrentMergeRetain).toBe(1);
    expect(r.leaves.map((l) => [l.vm, l.mode, l.returnValue])).toEqual([
      ['kvm-003', 'finished', 0],
      ['kvm-001', 'finished', 0],
      ['kvm-002', 'finished', 0],
    ]);
    for (const l of r.leaves) expect(l.state).toMatch(/^\d{8}T\d{6}Z$/);
  });

  it('merges two at a time with mergeConcurrency 2', () => {
    const r = simulate({ vms: ['kvm-d', 'kvm-b', 'kvm-a', 'kvm-c'], policy: { ...policy, mergeConcurrency: 2 } });
    expect(r.violations).toEqual([]);
    expect(r.mergeOrder).toEqual(['kvm-a', 'kvm-b', 'kvm-c', 'kvm-d']);
    expect(r.maxConcurrentMergeRetain).toBe(2);
    expect(r.leaves.every((l) => l.mode === 'finished' && l.returnValue === 0)).toBe(true);
  });

  it('ends a failed snapshot where it failed and finishes the others', () => {
    const r = simulate({
      vms: ['kvm-a', 'kvm-b', 'kvm-c'],
      policy,
      result: (vm, working) => (vm === 'kvm-b' && working === 'snapshotting' ? 5 : 0),
    });
    expect(r.violations).toEqual([]);
    expect(r.mergeOrder).toEqual(['kvm-a', 'kvm-c']);
    expect(r.leaves.map((l) => [l.vm, l.mode, l.returnValue])).toEqual([
      ['kvm-a', 'finished', 0],
      ['kvm-b', 'snapshotted', 5],
      ['kvm-c', 'finished', 0],
    ]);
  });

  it('ends a failed retain where it failed and finishes the others', () => {
    const r = simulate({
      vms: ['kvm-a', 'kvm-b', 'kvm-c'],
      policy,
      result: (vm, working) => (vm === 'kvm-a' && working === 'retaining' ? 7 : 0),
    });
    expect(r.mergeOrder).toEqual(['kvm-a', 'kvm-b', 'kvm-c']);
    expect(r.leaves.map((l) => [l.vm, l.mode, l.returnValue])).toEqual([
      ['kvm-a', 'retained', 7],
      ['kvm-b', 'finished', 0],
      ['kvm-c', 'finished', 0],
    ]);
  });

  it('ends a failed merge where it failed and still merges and finishes the others', () => {
    const r = simulate({
      vms: ['kvm-a', 'kvm-b', 'kvm-c'],
      policy,
      result: (vm, working) => (vm === 'kvm-a' && working === 'merging' ? 11 : 0),
    });
    expect(r.mergeOrder).toEqual(['kvm-a', 'kvm-b', 'kvm-c']);
    expect(r.leaves.map((l) => [l.vm, l.mode, l.returnValue])).toEqual([
      ['kvm-a', 'merged', 11],
      ['kvm-b', 'finished', 0],
      ['kvm-c', 'finished', 0],
    ]);
  });

  it('fails a snapshot no node claims after the claim timeout and finishes the others', () => {
    // kvm-b's node never takes a turn; one round is one second, the claim timeout 5 s.
    const r = simulate({ vms: ['kvm-a', 'kvm-b'], policy: { ...policy, claimTimeoutMs: 5_000 }, pace: { 'kvm-b': 1_000_000 } });
    expect(r.violations).toEqual([]);
    expect(r.mergeOrder).toEqual(['kvm-a']);
    expect(r.leaves.map((l) => [l.vm, l.mode, l.returnValue])).toEqual([
      ['kvm-a', 'finished', 0],
      ['kvm-b', 'snapshotted', 49],
    ]);
  });
});

describe('one workflow per VM at a time', () => {
  const mk = (vm: string, leaf: string, mode: string, returnValue = 0) => ({
    dn: `ou=${leaf},ou=backup,sstVirtualMachine=${vm},x`, vm, leaf, mode, state: '0', returnValue, executionTime: {}, modifiedAt: new Date(0),
  });
  it('holds a leaf before its snapshot while an older leaf of the same VM is unfinished', async () => {
    const { vmsBusyElsewhere, decideBatch, defaultBatchPolicy } = await import('../../src/control/decideBatch.js');
    const all = [mk('a', '20261201T020000Z', 'merging'), mk('b', '20261201T020000Z', 'snapshotted', 5), mk('a', '20261201T030000Z', 'initialized'), mk('b', '20261201T030000Z', 'initialized')];
    const busy = vmsBusyElsewhere(all, '20261201T030000Z');
    expect([...busy]).toEqual(['a']); // b's older backup failed: it has ended
    const writes = decideBatch(all.filter((l) => l.leaf === '20261201T030000Z'), defaultBatchPolicy, new Date(0), busy);
    expect(writes.map((x) => [x.vm, x.next])).toEqual([['b', 'snapshot']]);
    expect(vmsBusyElsewhere(all, '20261201T020000Z').size).toBe(0);
  });

  it('holds an older-named leaf while a newer-named leaf of the VM is already running', async () => {
    const { vmsBusyElsewhere, decideBatch, defaultBatchPolicy } = await import('../../src/control/decideBatch.js');
    const all = [mk('a', '20261201T020000Z', 'snapshotted'), mk('a', '20260701T010000Z', 'initialized')];
    expect([...vmsBusyElsewhere(all, '20260701T010000Z')]).toEqual(['a']);
    const july = decideBatch([all[1]!], defaultBatchPolicy, new Date(0), vmsBusyElsewhere(all, '20260701T010000Z'));
    expect(july).toEqual([]);
    const december = decideBatch([all[0]!], defaultBatchPolicy, new Date(0), vmsBusyElsewhere(all, '20261201T020000Z'));
    expect(december.map((m) => [m.vm, m.next])).toEqual([['a', 'merge']]);
  });

  it('lets the batch merge while one of its VMs waits on another batch (no circular wait)', async () => {
    const { vmsBusyElsewhere, decideBatch, defaultBatchPolicy } = await import('../../src/control/decideBatch.js');
    const x = '20261201T020000Z';
    const y = '20261201T030000Z';
    const all = [mk('v', x, 'snapshotted'), mk('w', x, 'initialized'), mk('w', y, 'snapshotted'), mk('v', y, 'initialized')];
    const wx = decideBatch(all.filter((l) => l.leaf === x), defaultBatchPolicy, new Date(0), vmsBusyElsewhere(all, x));
    const wy = decideBatch(all.filter((l) => l.leaf === y), defaultBatchPolicy, new Date(0), vmsBusyElsewhere(all, y));
    expect(wx.map((m) => [m.vm, m.next])).toEqual([['v', 'merge']]);
    expect(wy.map((m) => [m.vm, m.next])).toEqual([['w', 'merge']]);
  });
});
