import { setup, transition } from 'xstate';
import { nodeStepStates } from './nodeStepStates.js';

/**
 * Deleting one finished backup, pure like backupMachine. The original
 * control instance and web UI write `delete` on a finished leaf; the node of
 * the VM claims it (`deleting`), removes that backup's files and reports
 * `deleted` with a return value; after a successful `deleted` the control
 * side removes the leaf entry (`removed` stands for "the leaf is gone"). A
 * failed delete stays at `deleted` for a human, who may write `delete` again.
 */
export interface DeleteContext {
  returnValue: number;
}

export type DeleteEvent =
  | { type: 'control.delete' }
  | { type: 'control.remove' }
  | { type: 'control.timeout'; returnValue: number }
  | { type: 'node.claim' }
  | { type: 'node.report'; returnValue: number };

export const deleteMachine = setup({
  types: {} as { context: DeleteContext; events: DeleteEvent },
  guards: {
    succeeded: ({ context }) => context.returnValue === 0,
    failed: ({ context }) => context.returnValue !== 0,
  },
}).createMachine({
  id: 'delete',
  initial: 'finished',
  context: { returnValue: 0 },
  states: {
    finished: { on: { 'control.delete': 'delete' } },
    ...nodeStepStates('delete', 'deleting', 'deleted', 'removed', 'control.remove'),
    // replaces the shared `deleted`: besides moving on, a failed delete may be asked again
    deleted: {
      on: {
        'control.remove': { target: 'removed', guard: 'succeeded' },
        'control.delete': { target: 'delete', guard: 'failed' },
      },
    },
    removed: { type: 'final' },
  },
});

function isDeleteState(mode: string): boolean {
  return Object.prototype.hasOwnProperty.call(deleteMachine.config.states, mode) && mode !== 'removed';
}

/** delete, deleting, deleted: a leaf in one of these belongs to the delete protocol. */
export function isDeleteMode(mode: string): boolean {
  return isDeleteState(mode) && mode !== 'finished';
}

/** The mode `event` leads to from `mode`, or undefined when it is not allowed there. */
export function nextDeleteMode(mode: string, returnValue: number, event: DeleteEvent): string | undefined {
  if (!isDeleteState(mode)) return undefined;
  const from = deleteMachine.resolveState({ value: mode, context: { returnValue } });
  if (!from.can(event)) return undefined;
  const [to] = transition(deleteMachine, from, event);
  return String(to.value);
}

export function deleteNodeClaim(mode: string): string | undefined {
  return mode === 'finished' ? undefined : nextDeleteMode(mode, 0, { type: 'node.claim' });
}

export function deleteNodeReport(workingMode: string, returnValue: number): string | undefined {
  return nextDeleteMode(workingMode, 0, { type: 'node.report', returnValue });
}

/** Whether the control side may now remove the leaf entry (a successful `deleted`). */
export function leafRemovable(mode: string, returnValue: number): boolean {
  return nextDeleteMode(mode, returnValue, { type: 'control.remove' }) === 'removed';
}
