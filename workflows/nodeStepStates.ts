import { assign } from 'xstate';

/**
 * The three states of one node step, shared by the backup and restore
 * machines: the command the node claims, the mode it works in, and the mode
 * it reports (with a return value). From the reported mode the control side
 * moves on with `nextEvent` only when the step succeeded. A command or
 * working mode the control side gives up on (timeout) goes to the reported
 * mode with the timeout's code.
 */
const report = assign({
  returnValue: ({ event }: { event: { type: string; returnValue?: number } }) => event.returnValue ?? 0,
});

export function nodeStepStates(command: string, working: string, done: string, next: string, nextEvent: string) {
  return {
    [command]: {
      on: {
        'node.claim': { target: working },
        'control.timeout': { target: done, actions: report },
      },
    },
    [working]: {
      on: {
        'node.report': { target: done, actions: report },
        'control.timeout': { target: done, actions: report },
      },
    },
    [done]: {
      on: { [nextEvent]: { target: next, guard: 'succeeded' } },
    },
  } as const;
}
