import { describe, expect, it } from 'vitest';
import { evaluateBackupCheck, type CheckedVm } from '../../src/control/evaluateBackupCheck.js';
import { vmBackupHealth } from '../../src/control/backupHealth.js';
import type { LeafEntry } from '../../src/directory/types.js';

const NOW = new Date('2026-11-29T12:00:00Z');
const limits = { maxAgeMs: 26 * 3_600_000, maxRuntimeMs: 6 * 3_600_000 };

function leaf(vm: string, name: string, mode: string, returnValue?: number): LeafEntry {
  return {
    dn: `ou=${name},ou=backup,sstVirtualMachine=${vm},ou=virtual machines,ou=virtualization,ou=services,o=test`,
    vm, leaf: name, mode, state: '0', returnValue, executionTime: {}, modifiedAt: undefined,
  };
}
const vm = (name: string, leaves: LeafEntry[], excluded = false): CheckedVm => ({ name, excluded, leaves });

describe('evaluateBackupCheck', () => {
  it('is OK when every VM has a good backup younger than max-age, with perfdata', () => {
    const r = evaluateBackupCheck([vm('a', [leaf('a', '20261129T020000Z', 'finished', 0)]), vm('b', [leaf('b', '20261128T230000Z', 'finished')])], NOW, limits);
    expect(r.state).toBe('OK');
    expect(r.line).toBe('OK: 2 VMs have a backup younger than 26h | vms=2;;;0 critical=0;;;0 warning=0;;;0 excluded=0;;;0 oldest_backup_age=46800s;;93600;0');
  });

  it('is CRITICAL for a VM never backed up, and says which', () => {
    const r = evaluateBackupCheck([vm('a', [leaf('a', '20261129T020000Z', 'finished', 0)]), vm('never', [])], NOW, limits);
    expect(r.state).toBe('CRITICAL');
    expect(r.line.startsWith('CRITICAL: never: never backed up | ')).toBe(true);
    expect(r.line).toContain(' critical=1;;;0 ');
  });

  it('is CRITICAL when the newest good backup is older than max-age', () => {
    const r = evaluateBackupCheck([vm('old', [leaf('old', '20261128T080000Z', 'finished', 0)])], NOW, limits);
    expect(r.state).toBe('CRITICAL');
    expect(r.line).toContain('old: last good backup 28h ago');
  });

  it('is CRITICAL when the newest backup failed, even with a good one inside max-age before it', () => {
    const r = evaluateBackupCheck([vm('f', [leaf('f', '20261129T010000Z', 'finished', 0), leaf('f', '20261129T020000Z', 'snapshotted', 8)])], NOW, limits);
    expect(r.state).toBe('CRITICAL');
    expect(r.vms[0]).toMatchObject({ vm: 'f', reasons: ['newest backup failed'], lastSuccess: '2026-11-29T01:00:00.000Z', lastFailure: '2026-11-29T02:00:00.000Z' });
  });

  it('an older failure followed by a good backup is OK', () => {
    const r = evaluateBackupCheck([vm('f', [leaf('f', '20261128T020000Z', 'snapshotted', 8), leaf('f', '20261129T020000Z', 'finished', 0)])], NOW, limits);
    expect(r.state).toBe('OK');
  });

  it('skips excluded VMs and counts them in the perfdata', () => {
    const r = evaluateBackupCheck([vm('x', [], true), vm('a', [leaf('a', '20261129T020000Z', 'finished', 0)])], NOW, limits);
    expect(r.state).toBe('OK');
    expect(r.line).toContain('1 VMs have a backup younger than 26h (1 excluded)');
    expect(r.line).toContain('excluded=1;;;0');
  });

  it('is WARNING for a workflow running longer than expected', () => {
    const r = evaluateBackupCheck([vm('slow', [leaf('slow', '20261128T200000Z', 'finished', 0), leaf('slow', '20261129T020000Z', 'merging')])], NOW, limits);
    expect(r.state).toBe('WARNING');
    expect(r.line).toContain('slow: workflow 20261129T020000Z (merging) runs for 10h');
  });

  it('a workflow still inside its time is OK and does not hide the good backup before it', () => {
    const r = evaluateBackupCheck([vm('busy', [leaf('busy', '20261129T020000Z', 'finished', 0), leaf('busy', '20261129T110000Z', 'snapshotting')])], NOW, limits);
    expect(r.state).toBe('OK');
  });

  it('is WARNING for a restore that stopped with an error and waits for a human', () => {
    const r = evaluateBackupCheck([vm('r', [leaf('r', '20261129T020000Z', 'unretainedSmallFiles', 38)])], NOW, limits);
    expect(r.state).toBe('WARNING');
    expect(r.line).toContain('r: workflow 20261129T020000Z (unretainedSmallFiles, 38) waits for a human');
  });

  it('CRITICAL outranks WARNING across VMs', () => {
    const r = evaluateBackupCheck([vm('r', [leaf('r', '20261129T020000Z', 'unretainedSmallFiles', 38)]), vm('never', [])], NOW, limits);
    expect(r.state).toBe('CRITICAL');
  });
});

describe('vmBackupHealth', () => {
  it('ignores leaves being deleted and names that are not leaf names', () => {
    const h = vmBackupHealth([leaf('a', '20261120T020000Z', 'deleting'), leaf('a', 'garbage', 'finished', 0)]);
    expect(h).toEqual({ lastSuccess: undefined, lastFailure: undefined, newestFailed: false, blocked: [], running: [] });
  });
});
