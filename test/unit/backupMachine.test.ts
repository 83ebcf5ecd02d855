import { describe, expect, it } from 'vitest';
import { controlDecision, nextBackupMode, nodeClaim, nodeReport, timeoutTarget, isBackupMode } from '../../workflows/backupMachine.js';
import { BackupModes } from '../../src/domain/modes.js';

describe('backup protocol machine', () => {
  it('walks the whole happy path with control and node turns', () => {
    const seen: string[] = [];
    let mode = 'initialize';
    for (let i = 0; i < 20 && mode !== 'finished'; i++) {
      seen.push(mode);
      const claim = nodeClaim(mode);
      if (claim) { mode = claim; continue; }
      const report = nodeReport(mode, 0);
      if (report) { mode = report; continue; }
      const d = controlDecision(mode, 0);
      if (d?.kind !== 'write') throw new Error(`stuck at ${mode}: ${JSON.stringify(d)}`);
      mode = d.next;
    }
    seen.push(mode);
    expect(seen).toEqual([...BackupModes]);
  });

  it('stops after a failed step: no merge after a failed snapshot', () => {
    expect(controlDecision('snapshotted', 5)).toEqual({ kind: 'done', ok: false });
    expect(nextBackupMode('snapshotted', 5, { type: 'control.merge' })).toBeUndefined();
    expect(controlDecision('merged', 11)).toEqual({ kind: 'done', ok: false });
    expect(controlDecision('retained', 7)).toEqual({ kind: 'done', ok: false });
  });

  it('lets the node claim only commands and report only working modes', () => {
    expect(nodeClaim('snapshot')).toBe('snapshotting');
    expect(nodeClaim('merge')).toBe('merging');
    expect(nodeClaim('retain')).toBe('retaining');
    for (const m of ['initialize', 'initialized', 'snapshotting', 'snapshotted', 'finished', 'bogus']) expect(nodeClaim(m)).toBeUndefined();
    expect(nodeReport('snapshotting', 0)).toBe('snapshotted');
    expect(nodeReport('snapshot', 0)).toBeUndefined();
  });

  it('tells the control side to wait while the node owns the step', () => {
    expect(controlDecision('snapshot', 0)).toEqual({ kind: 'waitForNode' });
    expect(controlDecision('merging', 0)).toEqual({ kind: 'waitForNode' });
    expect(controlDecision('finished', 0)).toEqual({ kind: 'done', ok: true });
  });

  it('sends a stuck command or working mode to its done mode on timeout', () => {
    expect(timeoutTarget('snapshot', 49)).toBe('snapshotted');
    expect(timeoutTarget('retaining', 49)).toBe('retained');
    expect(timeoutTarget('snapshotted', 49)).toBeUndefined();
  });

  it('does not know modes outside the backup protocol', () => {
    expect(isBackupMode('restoring')).toBe(false);
    expect(controlDecision('restoring', 0)).toBeUndefined();
    expect(controlDecision('toString', 0)).toBeUndefined();
  });
});
