import { describe, expect, it } from 'vitest';
import { planUnblock } from '../../src/control/planUnblock.js';
import { leafEntry } from '../helpers/leafEntries.js';

const T0 = new Date('2026-01-01T00:00:00Z');
const at = (leaf: string, mode: string, returnValue = 0) => leafEntry('vm1', leaf, mode, T0, { returnValue });
const kinds = (leaves: ReturnType<typeof at>[]) => planUnblock(leaves).map((a) => `${a.leaf.leaf} ${a.leaf.mode}: ${a.kind}`);

describe('planUnblock: nothing destructive, nothing failed by force', () => {
  it('acknowledges a failed restore, aborts one that touched nothing live, drives backups the control side owes on', () => {
    expect(kinds([
      at('20260101T030000Z', 'restored', 21),
      at('20260102T030000Z', 'unretainedSmallFiles'),
      at('20260103T030000Z', 'unretainedLargeFiles', 38),
      at('20260104T030000Z', 'merged'),
      at('20260105T030000Z', 'finished'),
      at('20260106T030000Z', 'snapshotted', 5),
    ])).toEqual([
      '20260101T030000Z restored: acknowledge',
      '20260102T030000Z unretainedSmallFiles: abortRestore',
      '20260103T030000Z unretainedLargeFiles: abortRestore',
      '20260104T030000Z merged: driveOn',
    ]);
  });

  it('leaves what a node must do, and the backups behind it, to the node', () => {
    expect(kinds([at('20260102T030000Z', 'initialized'), at('20260101T030000Z', 'merging'), at('20260103T030000Z', 'restoring')])).toEqual([
      '20260101T030000Z merging: leave',
      '20260102T030000Z initialized: leave',
      '20260103T030000Z restoring: leave',
    ]);
  });
});
