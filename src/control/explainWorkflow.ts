import { controlDecision } from '../../workflows/backupMachine.js';
import { isRestoreMode } from '../../workflows/restoreMachine.js';
import { isDeleteMode } from '../../workflows/deleteMachine.js';
import { NodeStepModes, type NodeStep } from '../domain/modes.js';
import { leafActive } from './decideBatch.js';
import { restoreFailed } from './decideRestores.js';
import type { LeafEntry } from '../directory/types.js';

const stepModes = Object.entries(NodeStepModes) as [NodeStep, (typeof NodeStepModes)[NodeStep]][];

/**
 * What a leaf that has not simply finished waits for, and what a human can
 * do about it — one sentence for `status`. `others`: the VM's other leaves
 * (a backup waits behind an older workflow of its VM); `node`: the VM's node.
 */
export function explainWorkflow(l: LeafEntry, others: readonly LeafEntry[], node: string | undefined): string {
  const rv = l.returnValue ?? 0;
  const on = node ? `node ${node}` : 'the VM\'s node';
  if (restoreFailed(l)) {
    return `the restore failed (${rv}): look at the VM (docs/restore-runbook.md), then \`stoney-backup restore ${l.vm} ${l.leaf} --abort\` acknowledges it`;
  }
  const command = stepModes.find(([, m]) => m.command === l.mode);
  if (command) return `waits for ${on} to claim ${command[0]} (a control side fails it with 49 after STONEY_CLAIM_TIMEOUT_S)`;
  const working = stepModes.find(([, m]) => m.working === l.mode);
  if (working) return `${on} works on ${working[0]} (failed with 49 after STONEY_STEP_TIMEOUT_S without a sign of life)`;
  if (l.mode === NodeStepModes.unretainSmallFiles.done && rv === 0) {
    return `waits for the user's decision on the restore's conflicts (\`stoney-backup restore ${l.vm} ${l.leaf} --prefer backup|live\` or \`--abort\`; given up after STONEY_RESTORE_DECISION_TIMEOUT_S)`;
  }
  if (isRestoreMode(l.mode) || isDeleteMode(l.mode)) {
    return rv === 0 ? 'waits for the control side to write the next step' : `failed (${rv}); the control side gives it up, or \`stoney-backup restore ${l.vm} ${l.leaf} --abort\``;
  }
  const d = controlDecision(l.mode, rv);
  if (d === undefined) return 'unknown mode: the node daemon marked it (51); fix or remove the leaf by hand';
  if (d.kind === 'done') {
    return d.ok ? 'finished' : `the backup failed at ${l.mode} (${rv}): the VM's later backups go on; \`kvmbackup\` skips the VM until \`--force\``;
  }
  if (l.mode === 'initialize' || l.mode === 'initialized') {
    const before = others.find((o) => o.leaf !== l.leaf && leafActive(o) && (!['initialize', 'initialized'].includes(o.mode) || o.leaf < l.leaf));
    if (before) return `waits for the VM's workflow on ${before.leaf} (${before.mode}) to end: one workflow per VM`;
  }
  return `waits for the control side (the control daemon, or the \`backup\`/\`kvmbackup\` run that started it — an interrupted \`kvmbackup\` resumes it on its next run; \`stoney-backup unblock ${l.vm}\` drives it on now)`;
}
