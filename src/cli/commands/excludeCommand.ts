import type { Command, ParsedArgs } from '../command.js';
import { ExitCode, exitCodeHelp } from '../exitCodes.js';
import { CliError, Runtime } from '../runtime.js';

async function setExclusion({ positionals, config, io }: ParsedArgs, excluded: boolean): Promise<number> {
  if (positionals.length === 0) throw new CliError(`name at least one VM`, ExitCode.usage);
  const rt = await Runtime.create(config, { daemon: false, io });
  try {
    const directory = await rt.connect();
    for (const name of positionals) {
      if (!(await directory.getVm(name))) throw new CliError(`no VM ${name} in the directory`, ExitCode.notFound);
    }
    for (const name of positionals) {
      await directory.setExcluded(name, excluded);
      io.out(`${name}: ${excluded ? 'excluded from' : 'included in'} backups`);
    }
    return ExitCode.ok;
  } finally {
    await rt.close();
  }
}

export const excludeCommand: Command = {
  name: 'exclude',
  summary: 'exclude VMs from backups (sstBackupExcludeFromBackup: TRUE)',
  usage: 'stoney-backup exclude VM... [--config FILE]',
  help: `Sets sstBackupExcludeFromBackup: TRUE on the VM's own ou=backup entry
(created if missing, as in the seed's exclusion example). The control daemon
and kvmbackup skip the VM from then on.

${exitCodeHelp}`,
  options: {},
  run: (args) => setExclusion(args, true),
};

export const includeCommand: Command = {
  name: 'include',
  summary: 'include excluded VMs in backups again',
  usage: 'stoney-backup include VM... [--config FILE]',
  help: `Clears the exclusion on the VM's own ou=backup entry, so the VM is backed
up by its schedule again.

${exitCodeHelp}`,
  options: {},
  run: (args) => setExclusion(args, false),
};
