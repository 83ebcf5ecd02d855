import { describe, expect, it } from 'vitest';
import { decideRestores, restoreAwaitsControl, FAILED_RESTORE_GRACE_MS, DEFAULT_RESTORE_DECISION_TIMEOUT_MS } from '../../src/control/decideRestores.js';
import { leafActive, type BatchPolicy } from '../../src/control/decideBatch.js';
import type { LeafEntry } from '../../src/directory/types.js';
import { nextRestoreMode } from '../../workflows/restoreMachine.js';
import { briefWrites, leafEntry } from '../helpers/leafEntries.js';

const LEAF = '20240301T020000Z';
const T0 = new Date('2024-03-02T10:00:00Z');
const policy: BatchPolicy = { mergeConcurrency: 1, claimTimeoutMs: 60_000, stepTimeoutMs: 3_600_000 };

function leaf(vm: string, mode: string, over: Partial<LeafEntry> = {}): LeafEntry {
  return leafEntry(vm, LEAF, mode, T0, { returnValue: 0, ...over });
}

const brief = briefWrites;

const later = (ms: number) => new Date(T0.getTime() + ms);

describe('decideRestores: the control instance part of the seed restore protocol', () => {
  it('hands the restore over after the large files (step 09) and ends a good restore (step 12)', () => {
    const leaves = [leaf('a', 'unretainedLargeFiles'), leaf('b', 'restored')];
    expect(brief(decideRestores(leaves, policy, T0))).toEqual(['a: unretainedLargeFiles → restore (handover)', 'b: restored → finished (now)']);
  });

  it('never moves the interaction phase on by itself (the user decides), nor anything a node works on', () => {
    const leaves = ['unretainSmallFiles', 'unretainingSmallFiles', 'unretainedSmallFiles', 'unretainLargeFiles', 'unretainingLargeFiles', 'restore', 'restoring'].map((m, i) => leaf(`v${i}`, m));
    expect(decideRestores(leaves, policy, later(59_000))).toEqual([]);
  });

  it('leaves backup leaves, finished and deleted ones to others', () => {
    const leaves = ['initialize', 'snapshot', 'merged', 'retained', 'finished', 'delete', 'deleted'].map((m, i) => leaf(`v${i}`, m));
    expect(decideRestores(leaves, policy, later(10 * DEFAULT_RESTORE_DECISION_TIMEOUT_MS))).toEqual([]);
  });

  it('fails an unclaimed restore command after the claim timeout and a silent step after the step timeout, with 49', () => {
    const leaves = [leaf('a', 'unretainSmallFiles'), leaf('b', 'restore'), leaf('c', 'unretainingLargeFiles', { modifiedAt: later(-3_000_000) })];
    expect(brief(decideRestores(leaves, policy, later(61_000)))).toEqual([
      'a: unretainSmallFiles → unretainedSmallFiles (now, 49)',
      'b: restore → restored (now, 49)',
    ]);
    expect(brief(decideRestores(leaves, policy, later(601_000)))).toContain('c: unretainingLargeFiles → unretainedLargeFiles (now, 49)');
  });

  it('gives a failed unretain step up only after the grace a watching CLI needs to see its code', () => {
    const leaves = [leaf('a', 'unretainedSmallFiles', { returnValue: 37 }), leaf('b', 'unretainedLargeFiles', { returnValue: 38 })];
    expect(decideRestores(leaves, policy, later(FAILED_RESTORE_GRACE_MS - 1000))).toEqual([]);
    expect(brief(decideRestores(leaves, policy, later(FAILED_RESTORE_GRACE_MS + 1000)))).toEqual([
      'a: unretainedSmallFiles → finished (now, 0)',
      'b: unretainedLargeFiles → finished (now, 0)',
    ]);
  });

  it('gives up an interaction phase nobody decided within the decision timeout (default one day)', () => {
    const waiting = [leaf('a', 'unretainedSmallFiles')];
    expect(decideRestores(waiting, policy, later(DEFAULT_RESTORE_DECISION_TIMEOUT_MS - 1000))).toEqual([]);
    expect(brief(decideRestores(waiting, policy, later(DEFAULT_RESTORE_DECISION_TIMEOUT_MS + 1000)))).toEqual(['a: unretainedSmallFiles → finished (now, 0)']);
    expect(brief(decideRestores(waiting, { ...policy, restoreDecisionTimeoutMs: 5_000 }, later(6_000)))).toEqual(['a: unretainedSmallFiles → finished (now, 0)']);
  });

  it('leaves a failed restore at restored for a human, and it does not keep the VM busy', () => {
    const failed = leaf('a', 'restored', { returnValue: 21 });
    expect(decideRestores([failed], policy, later(30 * DEFAULT_RESTORE_DECISION_TIMEOUT_MS))).toEqual([]);
    expect(restoreAwaitsControl(failed)).toBe(false);
    expect(leafActive(failed)).toBe(false);
    expect(leafActive(leaf('a', 'restored'))).toBe(true);
    expect(leafActive(leaf('a', 'unretainedSmallFiles'))).toBe(true);
    // Acknowledged (restore --abort): back to finished; a good restore at restored is not abortable.
    expect(nextRestoreMode('restored', 21, { type: 'control.abort' })).toBe('finished');
    expect(nextRestoreMode('restored', 0, { type: 'control.abort' })).toBeUndefined();
  });
});
