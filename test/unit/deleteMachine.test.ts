import { describe, expect, it } from 'vitest';
import { deleteNodeClaim, deleteNodeReport, isDeleteMode, leafRemovable, nextDeleteMode } from '../../workflows/deleteMachine.js';
import { nodeClaim } from '../../workflows/backupMachine.js';
import { restoreNodeClaim } from '../../workflows/restoreMachine.js';
import { NodeStepModes, PruneModes } from '../../src/domain/modes.js';

describe('delete protocol machine', () => {
  it('walks finished → delete → deleting → deleted → removed', () => {
    expect(nextDeleteMode('finished', 0, { type: 'control.delete' })).toBe('delete');
    expect(deleteNodeClaim('delete')).toBe('deleting');
    expect(deleteNodeReport('deleting', 0)).toBe('deleted');
    expect(leafRemovable('deleted', 0)).toBe(true);
  });

  it('keeps a failed delete for a human, who may ask again; it is never removed', () => {
    expect(deleteNodeReport('deleting', 13)).toBe('deleted');
    expect(leafRemovable('deleted', 13)).toBe(false);
    expect(nextDeleteMode('deleted', 13, { type: 'control.delete' })).toBe('delete');
    expect(nextDeleteMode('deleted', 0, { type: 'control.delete' })).toBeUndefined();
  });

  it('lets the node claim only `delete`, and the control side delete only a finished leaf', () => {
    for (const m of ['finished', 'deleting', 'deleted', 'snapshot', 'removed', 'bogus']) expect(deleteNodeClaim(m)).toBeUndefined();
    for (const m of ['snapshotted', 'retained', 'unretainedSmallFiles', 'initialize']) expect(nextDeleteMode(m, 0, { type: 'control.delete' })).toBeUndefined();
    expect(leafRemovable('finished', 0)).toBe(false);
    expect(leafRemovable('delete', 0)).toBe(false);
  });

  it('fails a command nobody claims, and a silent node, with the timeout code', () => {
    expect(nextDeleteMode('delete', 0, { type: 'control.timeout', returnValue: 49 })).toBe('deleted');
    expect(nextDeleteMode('deleting', 0, { type: 'control.timeout', returnValue: 49 })).toBe('deleted');
  });

  it('agrees with the mode table and with the other protocols (no mode claimed twice)', () => {
    expect(PruneModes.filter(isDeleteMode)).toEqual([...PruneModes]);
    expect(NodeStepModes.delete).toEqual({ command: 'delete', working: 'deleting', done: 'deleted' });
    expect(nodeClaim('delete')).toBeUndefined();
    expect(restoreNodeClaim('delete')).toBeUndefined();
  });
});
