import { setup, transition } from 'xstate';
import { nodeStepStates } from './nodeStepStates.js';

/**
 * The backup protocol of one leaf as a pure state machine. A state is a
 * sstProvisioningMode value; events are what a role (control or node) may
 * do next. Daemons never run this as an actor: they resolve the mode read
 * from the directory into a snapshot and ask which event is allowed
 * (reconcile, not react). No I/O and no imports from src/ adapters here.
 */
export interface BackupContext {
  returnValue: number;
}

export type BackupEvent =
  | { type: 'control.initialized' }
  | { type: 'control.snapshot' }
  | { type: 'control.merge' }
  | { type: 'control.retain' }
  | { type: 'control.finish' }
  | { type: 'control.timeout'; returnValue: number }
  | { type: 'node.claim' }
  | { type: 'node.report'; returnValue: number };

const succeeded = ({ context }: { context: BackupContext }) => context.returnValue === 0;

export const backupMachine = setup({
  types: {} as { context: BackupContext; events: BackupEvent },
  guards: { succeeded },
}).createMachine({
  id: 'backup',
  initial: 'initialize',
  context: { returnValue: 0 },
  states: {
    initialize: { on: { 'control.initialized': 'initialized' } },
    initialized: { on: { 'control.snapshot': 'snapshot' } },
    ...nodeStepStates('snapshot', 'snapshotting', 'snapshotted', 'merge', 'control.merge'),
    ...nodeStepStates('merge', 'merging', 'merged', 'retain', 'control.retain'),
    ...nodeStepStates('retain', 'retaining', 'retained', 'finished', 'control.finish'),
    finished: { type: 'final' },
  },
});

export type BackupMachineMode = keyof typeof backupMachine.config.states & string;

export function isBackupMode(mode: string): boolean {
  return Object.prototype.hasOwnProperty.call(backupMachine.config.states, mode);
}

function resolve(mode: string, returnValue: number) {
  return backupMachine.resolveState({ value: mode, context: { returnValue } });
}

/** The mode the machine moves to on `event`, or undefined when the event is not allowed in `mode`. */
export function nextBackupMode(mode: string, returnValue: number, event: BackupEvent): string | undefined {
  if (!isBackupMode(mode)) return undefined;
  const from = resolve(mode, returnValue);
  if (!from.can(event)) return undefined;
  const [to] = transition(backupMachine, from, event);
  return String(to.value);
}

/** Modes a node acts on: command → working mode. */
export function nodeClaim(mode: string): string | undefined {
  return nextBackupMode(mode, 0, { type: 'node.claim' });
}

/** The mode a node reports when its working mode ends. */
export function nodeReport(workingMode: string, returnValue: number): string | undefined {
  return nextBackupMode(workingMode, 0, { type: 'node.report', returnValue });
}

export type ControlDecision =
  | { kind: 'write'; next: string; event: BackupEvent['type'] }
  | { kind: 'waitForNode' }
  | { kind: 'done'; ok: boolean };

const controlEvents: BackupEvent[] = [
  { type: 'control.initialized' },
  { type: 'control.snapshot' },
  { type: 'control.merge' },
  { type: 'control.retain' },
  { type: 'control.finish' },
];

/**
 * What the control side does next for a leaf in `mode`. A "-ed" mode with a
 * non-zero return value is a failed backup: it stays where it failed (as in
 * the original implementation) and the control side stops.
 */
export function controlDecision(mode: string, returnValue: number): ControlDecision | undefined {
  if (!isBackupMode(mode)) return undefined;
  const s = resolve(mode, returnValue);
  if (s.status === 'done') return { kind: 'done', ok: returnValue === 0 };
  for (const event of controlEvents) {
    if (s.can(event)) {
      const [to] = transition(backupMachine, s, event);
      return { kind: 'write', next: String(to.value), event: event.type };
    }
  }
  if (s.can({ type: 'node.claim' }) || s.can({ type: 'node.report', returnValue: 0 })) return { kind: 'waitForNode' };
  return { kind: 'done', ok: false };
}

/** Where a stuck command or working mode goes on timeout (with the timeout code). */
export function timeoutTarget(mode: string, returnValue: number): string | undefined {
  return nextBackupMode(mode, 0, { type: 'control.timeout', returnValue });
}

/**
 * The one definition of "this backup succeeded": its leaf is `finished` with
 * return value 0 (a missing return value counts as 0, as the original's
 * leaves always carry one). What restore, retention, list, kvmbackup and the
 * reports all ask.
 */
export function backupSucceeded(l: { mode: string; returnValue?: number | undefined }): boolean {
  return l.mode === 'finished' && (l.returnValue ?? 0) === 0;
}
