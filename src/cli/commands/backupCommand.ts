import { formatLeafName } from '../../domain/leafName.js';
import type { VmEntry } from '../../directory/types.js';
import { requireNodeName } from '../config.js';
import { ExitCode, exitCodeHelp } from '../exitCodes.js';
import { CliError, Runtime } from '../runtime.js';
import { progressPrinter } from '../report.js';
import { runBatchAndReport } from '../runBatchCommand.js';
import { startLocalNode } from '../localNode.js';
import type { Command } from '../command.js';

export const backupCommand: Command = {
  name: 'backup',
  summary: 'back up VMs now and wait for the result',
  usage: 'stoney-backup backup VM... [--local] [--json] [--config FILE]',
  help: `Creates a leaf named after now (UTC) for each VM and drives it through
snapshot → merge → retain → finished as one batch, showing each step. The
steps are run by the node daemon of each VM's node; with --local they run in
this process instead (this host must be the VMs' node, STONEY_NODE_NAME).
Excluded VMs are refused unless named with --force.

Options:
  --local    run the node steps in this process
  --force    back up even if the VM is excluded
  --json     print the resulting leaves as JSON on stdout
  --verbose  log steps (JSON) on stderr

${exitCodeHelp}`,
  options: {
    local: { type: 'boolean' },
    force: { type: 'boolean' },
    json: { type: 'boolean' },
    verbose: { type: 'boolean' },
  },
  async run({ positionals, values, config, io }) {
    if (positionals.length === 0) throw new CliError('name at least one VM: stoney-backup backup VM...', ExitCode.usage);
    const rt = await Runtime.create(config, { daemon: false, verbose: values['verbose'] === true, io });
    try {
      const directory = await rt.connect();
      const vms: VmEntry[] = [];
      for (const name of positionals) {
        const vm = await directory.getVm(name);
        if (!vm) throw new CliError(`no VM ${name} in the directory`, ExitCode.notFound);
        if ((await directory.effectiveSettings(vm)).excluded && values['force'] !== true) {
          throw new CliError(`${name} is excluded from backups (sstBackupExcludeFromBackup); use --force or 'stoney-backup include ${name}'`, ExitCode.usage);
        }
        vms.push(vm);
      }
      if (values['local'] === true) {
        const nodeName = requireNodeName(rt.config);
        const foreign = vms.filter((v) => v.node !== nodeName);
        if (foreign.length) throw new CliError(`--local: ${foreign.map((v) => `${v.name} runs on ${v.node}`).join(', ')}, not on ${nodeName}`, ExitCode.usage);
        await startLocalNode(rt, directory, nodeName, progressPrinter(io));
      }
      return await runBatchAndReport(rt, directory, vms, formatLeafName(new Date()), values['json'] === true ? (leaves) => leaves : undefined);
    } finally {
      await rt.close();
    }
  },
};
