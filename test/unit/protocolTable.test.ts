/**
 * One protocol: the mode lists and the node-step table of src/domain/modes.ts
 * (what control, node and CLI code use) must be exactly what the xstate
 * machines of workflows/ define — a mode added, renamed or rewired in one
 * place and not the other fails here.
 */
import { describe, expect, it } from 'vitest';
import { BackupModes, NodeStepModes, PruneModes, RestoreModes, type NodeStep } from '../../src/domain/modes.js';
import { backupMachine, nodeClaim, nodeReport } from '../../workflows/backupMachine.js';
import { restoreMachine, restoreNodeClaim, restoreNodeReport } from '../../workflows/restoreMachine.js';
import { deleteMachine, deleteNodeClaim, deleteNodeReport } from '../../workflows/deleteMachine.js';

const statesOf = (m: { config: { states?: object } }) => Object.keys(m.config.states ?? {}).sort();

describe('the protocol table and the machines agree', () => {
  it('lists exactly the machines\' modes', () => {
    expect([...BackupModes].sort()).toEqual(statesOf(backupMachine));
    expect([...RestoreModes, 'finished'].sort()).toEqual(statesOf(restoreMachine));
    expect([...PruneModes, 'finished', 'removed'].sort()).toEqual(statesOf(deleteMachine));
  });

  it('has each node step as its machine wires it: command → claim → working → report → done', () => {
    const claims: Record<NodeStep, [(m: string) => string | undefined, (m: string, rv: number) => string | undefined]> = {
      snapshot: [nodeClaim, nodeReport],
      merge: [nodeClaim, nodeReport],
      retain: [nodeClaim, nodeReport],
      unretainSmallFiles: [restoreNodeClaim, restoreNodeReport],
      unretainLargeFiles: [restoreNodeClaim, restoreNodeReport],
      restore: [restoreNodeClaim, restoreNodeReport],
      delete: [deleteNodeClaim, deleteNodeReport],
    };
    for (const [step, m] of Object.entries(NodeStepModes) as [NodeStep, (typeof NodeStepModes)[NodeStep]][]) {
      const [claim, report] = claims[step];
      expect({ step, working: claim(m.command) }).toEqual({ step, working: m.working });
      expect({ step, done: report(m.working, 0), failed: report(m.working, 7) }).toEqual({ step, done: m.done, failed: m.done });
    }
  });
});
