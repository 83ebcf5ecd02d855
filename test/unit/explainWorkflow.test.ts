import { describe, expect, it } from 'vitest';
import { explainWorkflow } from '../../src/control/explainWorkflow.js';
import type { LeafEntry } from '../../src/directory/types.js';

function leaf(name: string, mode: string, returnValue = 0): LeafEntry {
  return { dn: `ou=${name},ou=backup,sstVirtualMachine=vm1,o=t`, vm: 'vm1', leaf: name, mode, state: '0', returnValue, executionTime: {}, modifiedAt: new Date(0) };
}
const L = '20260101T030000Z';

describe('explainWorkflow: what a leaf waits for, in one sentence for status', () => {
  it('names the node for commands and working modes, and the timeout that ends them', () => {
    expect(explainWorkflow(leaf(L, 'merge'), [], 'node-01')).toBe('waits for node node-01 to claim merge (a control side fails it with 49 after STONEY_CLAIM_TIMEOUT_S)');
    expect(explainWorkflow(leaf(L, 'unretainingLargeFiles'), [], 'node-01')).toMatch(/^node node-01 works on unretainLargeFiles/);
  });
  it('tells how to end a failed restore and an undecided one', () => {
    expect(explainWorkflow(leaf(L, 'restored', 21), [], 'n')).toContain('`stoney-backup restore vm1 20260101T030000Z --abort` acknowledges it');
    expect(explainWorkflow(leaf(L, 'unretainedSmallFiles'), [], 'n')).toMatch(/^waits for the user's decision .*--prefer backup\|live/);
  });
  it('names the older workflow a new backup waits behind', () => {
    const older = leaf('20251231T030000Z', 'merging');
    expect(explainWorkflow(leaf(L, 'initialized'), [older], 'n')).toBe('waits for the VM\'s workflow on 20251231T030000Z (merging) to end: one workflow per VM');
  });
  it('says a failed backup does not stop later ones, and who drives control-side modes', () => {
    expect(explainWorkflow(leaf(L, 'snapshotted', 5), [], 'n')).toMatch(/^the backup failed at snapshotted \(5\): the VM's later backups go on/);
    expect(explainWorkflow(leaf(L, 'merged'), [], 'n')).toMatch(/^waits for the control side .*interrupted `kvmbackup` resumes it/);
  });
});
