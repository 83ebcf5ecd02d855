import { runDelete } from '../../control/runDelete.js';
import { findVmAndLeaf } from '../findVmAndLeaf.js';
import { describeReturnCode } from '../../domain/returnCodes.js';
import { requireNodeName } from '../config.js';
import { ExitCode, exitCodeHelp } from '../exitCodes.js';
import { CliError, Runtime } from '../runtime.js';
import { leafChangeLine, progressPrinter } from '../report.js';
import { startLocalNode } from '../localNode.js';
import type { Command } from '../command.js';

export const deleteCommand: Command = {
  name: 'delete',
  summary: 'delete one finished backup (its files, then its leaf), through the directory',
  usage: 'stoney-backup delete VM LEAF [--local] [--json] [--config FILE]',
  help: `Deletes backup LEAF of VM the way the original stoney cloud control
instance does: writes \`delete\` on the finished leaf, waits until the VM's
node has removed that backup's files (\`deleting\` → \`deleted\`) and, when
the node reports return value 0, removes the leaf entry. Only the files of
that backup are removed (<file>.<LEAF> and manifest.json in its backup
directory); the node refuses (57) while another workflow of the VM runs. A
failed delete stays at \`deleted\` with the node's return value (e.g. 13,
cannot remove file); running the command again retries it.

Options:
  --local   run the node step in this process (this host must be the VM's node)
  --json    print the outcome as JSON on stdout

${exitCodeHelp}`,
  options: { local: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ positionals, values, config, io }) {
    const [name, leafName, ...rest] = positionals;
    if (!name || !leafName || rest.length) throw new CliError('usage: stoney-backup delete VM LEAF (see stoney-backup list VM)', ExitCode.usage);
    const rt = await Runtime.create(config, { daemon: false, io });
    try {
      const directory = await rt.connect();
      const { vm, leaf } = await findVmAndLeaf(directory, name, leafName);
      if (values['local'] === true) {
        const nodeName = requireNodeName(rt.config);
        if (vm.node !== nodeName) throw new CliError(`--local: ${name} runs on ${vm.node}, not on ${nodeName}`, ExitCode.usage);
        await startLocalNode(rt, directory, nodeName, progressPrinter(io));
      }
      void rt.untilSignal();
      const result = await runDelete({ directory, leaf, policy: rt.config.policy, logger: rt.logger, signal: rt.abort.signal, onLeafChange: (l) => io.err(leafChangeLine(l)) });
      const rv = result.leaf.returnValue ?? 0;
      if (values['json'] === true) {
        io.out(JSON.stringify({ vm: name, leaf: leafName, outcome: result.outcome, returnValue: rv, returnText: describeReturnCode(rv), leafRemoved: result.leafRemoved }, null, 2));
      } else if (result.outcome === 'deleted') {
        io.out(`${name}: backup ${leafName} deleted`);
      } else {
        io.out(`${name}: delete of ${leafName} FAILED with return value ${rv} (${describeReturnCode(rv)}); the leaf stays at deleted`);
      }
      return result.outcome === 'deleted' ? ExitCode.ok : ExitCode.backupFailed;
    } finally {
      await rt.close();
    }
  },
};
