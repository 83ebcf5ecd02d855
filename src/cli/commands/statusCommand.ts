import { backupSucceeded } from '../../../workflows/backupMachine.js';
import { describeReturnCode } from '../../domain/returnCodes.js';
import { leafActive } from '../../control/decideBatch.js';
import { explainWorkflow } from '../../control/explainWorkflow.js';
import type { Command } from '../command.js';
import { ExitCode, exitCodeHelp } from '../exitCodes.js';
import { Runtime } from '../runtime.js';

export const statusCommand: Command = {
  name: 'status',
  summary: 'show backup workflows in progress and those that failed',
  usage: 'stoney-backup status [--json] [--config FILE]',
  help: `Lists every leaf whose workflow has not finished: in progress (with its
current mode and when it last changed) or stopped by a failure (with the
return value and its meaning), and under each what it waits for and what a
human can do about it (→ line; "waitsFor" in --json).

${exitCodeHelp}`,
  options: { json: { type: 'boolean' } },
  async run({ values, config, io }) {
    const rt = await Runtime.create(config, { daemon: false, io });
    try {
      const directory = await rt.connect();
      const vms = await directory.listVms();
      const leaves = (await directory.listLeavesOfVms(vms.map((v) => v.name))).filter((l) => !backupSucceeded(l));
      const rows = leaves.map((l) => ({
        vm: l.vm,
        node: vms.find((v) => v.name === l.vm)?.node ?? null,
        leaf: l.leaf,
        mode: l.mode,
        state: leafActive(l) ? (l.returnValue ? 'failed, waiting for a human' : 'in progress') : 'failed',
        returnValue: l.returnValue ?? null,
        returnText: l.returnValue ? describeReturnCode(l.returnValue) : null,
        modifiedAt: l.modifiedAt?.toISOString() ?? null,
        waitsFor: explainWorkflow(l, leaves.filter((o) => o.vm === l.vm), vms.find((v) => v.name === l.vm)?.node),
      }));
      if (values['json'] === true) io.out(JSON.stringify({ workflows: rows }, null, 2));
      else if (rows.length === 0) io.out('no backup workflows in progress or failed');
      else {
        for (const r of rows) {
          io.out(`${r.vm.padEnd(24)} ${r.leaf}  ${r.mode.padEnd(14)} ${r.state}${r.returnValue ? `  (${r.returnValue}: ${r.returnText})` : ''}  on ${r.node ?? '?'}  since ${r.modifiedAt ?? '?'}`);
          io.out(`${''.padEnd(24)} → ${r.waitsFor}`);
        }
      }
      return ExitCode.ok;
    } finally {
      await rt.close();
    }
  },
};
