import { setup, transition } from 'xstate';
import { nodeStepStates } from './nodeStepStates.js';

/**
 * The restore protocol on the leaf of the backup being restored, pure like
 * backupMachine. It starts and ends in `finished`. Up to
 * `unretainedSmallFiles` (the user-interaction phase: conflicts are decided
 * there) the control side may abort back to `finished`; a failed large-file
 * copy touched nothing live and may be aborted too. After the restore has
 * started there is no way back; a failed one waits at `restored` until it is
 * acknowledged (abort) back to `finished`.
 */
export interface RestoreContext {
  returnValue: number;
}

export type RestoreEvent =
  | { type: 'control.unretainSmallFiles' }
  | { type: 'control.unretainLargeFiles' }
  | { type: 'control.restore' }
  | { type: 'control.finish' }
  | { type: 'control.abort' }
  | { type: 'control.timeout'; returnValue: number }
  | { type: 'node.claim' }
  | { type: 'node.report'; returnValue: number };

export const restoreMachine = setup({
  types: {} as { context: RestoreContext; events: RestoreEvent },
  guards: {
    succeeded: ({ context }) => context.returnValue === 0,
    failed: ({ context }) => context.returnValue !== 0,
  },
}).createMachine({
  id: 'restore',
  initial: 'finished',
  context: { returnValue: 0 },
  states: {
    finished: { on: { 'control.unretainSmallFiles': 'unretainSmallFiles' } },
    ...nodeStepStates('unretainSmallFiles', 'unretainingSmallFiles', 'unretainedSmallFiles', 'unretainLargeFiles', 'control.unretainLargeFiles'),
    ...nodeStepStates('unretainLargeFiles', 'unretainingLargeFiles', 'unretainedLargeFiles', 'restore', 'control.restore'),
    ...nodeStepStates('restore', 'restoring', 'restored', 'finished', 'control.finish'),
  },
});

// The interaction phase and a failed large copy may go back to `finished`; so
// may a failed restore, once a human has looked at it (the VM was rolled back
// or the code says what is left to do): the backup itself is still good.
const abortable: Record<string, 'any' | 'failed'> = { unretainedSmallFiles: 'any', unretainedLargeFiles: 'failed', restored: 'failed' };

export function isRestoreMode(mode: string): boolean {
  return Object.prototype.hasOwnProperty.call(restoreMachine.config.states, mode) && mode !== 'finished';
}

function resolve(mode: string, returnValue: number) {
  return restoreMachine.resolveState({ value: mode, context: { returnValue } });
}

export function nextRestoreMode(mode: string, returnValue: number, event: RestoreEvent): string | undefined {
  if (!Object.prototype.hasOwnProperty.call(restoreMachine.config.states, mode)) return undefined;
  if (event.type === 'control.abort') {
    const rule = abortable[mode];
    return rule === 'any' || (rule === 'failed' && returnValue !== 0) ? 'finished' : undefined;
  }
  const from = resolve(mode, returnValue);
  if (!from.can(event)) return undefined;
  const [to] = transition(restoreMachine, from, event);
  return String(to.value);
}

export function restoreNodeClaim(mode: string): string | undefined {
  return mode === 'finished' ? undefined : nextRestoreMode(mode, 0, { type: 'node.claim' });
}

export function restoreNodeReport(workingMode: string, returnValue: number): string | undefined {
  return nextRestoreMode(workingMode, 0, { type: 'node.report', returnValue });
}
