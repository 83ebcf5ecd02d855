import { backupSucceeded } from '../../../workflows/backupMachine.js';
import { abortRestore } from '../../control/runRestore.js';
import { explainWorkflow } from '../../control/explainWorkflow.js';
import { planUnblock, type UnblockAction } from '../../control/planUnblock.js';
import type { Command } from '../command.js';
import { ExitCode, exitCodeHelp } from '../exitCodes.js';
import { CliError, Runtime } from '../runtime.js';
import { driveBatch } from '../runBatchCommand.js';

const verbs: Record<UnblockAction['kind'], string> = {
  acknowledge: 'acknowledge the failed restore (back to finished; the backup is good)',
  abortRestore: 'abort the restore (nothing live was touched)',
  driveOn: 'drive the backup on to its end',
  leave: 'leave it: it waits for a node',
};

export const unblockCommand: Command = {
  name: 'unblock',
  summary: 'end what holds a VM\'s backups up: acknowledge, abort or drive on its open workflows',
  usage: 'stoney-backup unblock VM [--dry-run] [--json] [--config FILE]',
  help: `For every open workflow of VM: a failed restore (restored with a code) is
acknowledged, a restore waiting for a decision or after a failed unretain
step (nothing live touched) is aborted, a backup waiting for the control
side (initialize, snapshotted, merged, retained, … — left by an interrupted
kvmbackup or backup) is driven on to its end by this command (the node
daemon does the steps). Nothing is ever failed by force: a leaf that waits
for a node (a command to claim, a step running) is left to it and to the
timeouts, and named. Exit 0 when nothing holds the VM up any more, 1 when
something still does or a backup driven on failed (see the lines).

Options:
  --dry-run   print what would be done; change nothing
  --json      print the actions as JSON on stdout

${exitCodeHelp}`,
  options: { 'dry-run': { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ positionals, values, config, io }) {
    if (positionals.length !== 1) throw new CliError('name one VM', ExitCode.usage);
    const name = positionals[0]!;
    const rt = await Runtime.create(config, { daemon: false, io });
    try {
      const directory = await rt.connect();
      const vm = await directory.getVm(name);
      if (!vm) throw new CliError(`no VM ${name} in the directory`, ExitCode.notFound);
      const leaves = await directory.listLeaves(name);
      const actions = planUnblock(leaves);
      const rows: { leaf: string; mode: string; action: UnblockAction['kind']; outcome: string }[] = [];
      let driveFailed = false;
      for (const a of actions) {
        let outcome = values['dry-run'] === true ? 'dry run' : '';
        if (!outcome) {
          if (a.kind === 'acknowledge' || a.kind === 'abortRestore') outcome = `now ${(await abortRestore(directory, a.leaf, rt.logger)).mode}`;
          else if (a.kind === 'driveOn') {
            const ended = await driveBatch(rt, directory, [vm], a.leaf.leaf);
            if (!ended) return ExitCode.interrupted;
            const l = ended.find((x) => x.vm === name);
            driveFailed ||= !l || !backupSucceeded(l);
            outcome = l ? `now ${l.mode}${l.returnValue ? ` (return value ${l.returnValue})` : ''}` : 'gone';
          } else outcome = explainWorkflow(a.leaf, leaves, vm.node);
        }
        rows.push({ leaf: a.leaf.leaf, mode: a.leaf.mode, action: a.kind, outcome });
        if (values['json'] !== true) io.out(`${name} ${a.leaf.leaf} (${a.leaf.mode}): ${verbs[a.kind]} — ${outcome}`);
      }
      if (values['json'] === true) io.out(JSON.stringify({ vm: name, actions: rows }, null, 2));
      else if (rows.length === 0) io.out(`${name}: nothing holds its backups up`);
      const stillBlocked = actions.some((a) => a.kind === 'leave') || driveFailed;
      return stillBlocked && values['dry-run'] !== true ? ExitCode.backupFailed : ExitCode.ok;
    } finally {
      await rt.close();
    }
  },
};
