import { parseArgs } from 'node:util';
import { BackupError, UsageError, errorMessage } from '../domain/errors.js';
import type { Command } from './command.js';
import { DirectoryError, isConnectionFailure } from '../directory/DirectoryError.js';
import { ExitCode, exitCodeHelp } from './exitCodes.js';
import { CliError, processIo, type Io } from './runtime.js';
import { configKeys } from './config.js';
import { backupCommand } from './commands/backupCommand.js';
import { controlCommand } from './commands/controlCommand.js';
import { excludeCommand, includeCommand } from './commands/excludeCommand.js';
import { kvmbackupCommand } from './commands/kvmbackupCommand.js';
import { listCommand } from './commands/listCommand.js';
import { nodeCommand } from './commands/nodeCommand.js';
import { statusCommand } from './commands/statusCommand.js';
import { restoreCommand } from './commands/restoreCommand.js';
import { deleteCommand } from './commands/deleteCommand.js';
import { checkCommand } from './commands/checkCommand.js';
import { verifyCommand } from './commands/verifyCommand.js';
import { unblockCommand } from './commands/unblockCommand.js';

export const commands: Command[] = [backupCommand, restoreCommand, deleteCommand, listCommand, verifyCommand, statusCommand, unblockCommand, checkCommand, excludeCommand, includeCommand, kvmbackupCommand, nodeCommand, controlCommand];

function mainHelp(): string {
  return `stoney-backup — back up KVM virtual machines of a stoney cloud through its OpenLDAP directory

Usage: stoney-backup COMMAND [options]   (stoney-backup COMMAND --help for details)

Commands:
${commands.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`).join('\n')}

Global options:
  --config FILE   KEY=value configuration file (the environment wins over it)
  --help, -h      help

Configuration keys (environment or --config):
${Object.entries(configKeys).map(([k, v]) => `  ${k.padEnd(26)} ${v}`).join('\n')}

${exitCodeHelp}`;
}

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.out(mainHelp());
    return name === undefined ? ExitCode.usage : ExitCode.ok;
  }
  if (name === '--version') {
    io.out('stoney-backup 0.1.0');
    return ExitCode.ok;
  }
  const command = commands.find((c) => c.name === name);
  if (!command) {
    io.err(`stoney-backup: unknown command ${JSON.stringify(name)}; see stoney-backup --help`);
    return ExitCode.usage;
  }
  try {
    const { values, positionals } = parseArgs({
      args: rest,
      options: { ...command.options, config: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
    if (values['help'] === true) {
      io.out(`Usage: ${command.usage}\n\n${command.help}`);
      return ExitCode.ok;
    }
    const config = typeof values['config'] === 'string' ? values['config'] : undefined;
    return await command.run({ positionals, values, config, io });
  } catch (err) {
    if (err instanceof CliError) {
      io.err(`stoney-backup ${name}: ${err.message}`);
      return err.exitCode;
    }
    // `code` is a string on Node errors but a number on LDAP and protocol errors: look before using it.
    const code: unknown = (err as { code?: unknown } | undefined)?.code;
    if (err instanceof UsageError || (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))) {
      if (command.usageError) return command.usageError(errorMessage(err), io);
      io.err(`stoney-backup ${name}: ${errorMessage(err)}\nUsage: ${command.usage}`);
      return ExitCode.usage;
    }
    if ((err as Error | undefined)?.name === 'AbortError' || code === 'ABORT_ERR') {
      io.err(`stoney-backup ${name}: interrupted`);
      return ExitCode.interrupted;
    }
    if (err instanceof DirectoryError && isConnectionFailure(err)) {
      io.err(`stoney-backup ${name}: the directory failed: ${err.message}`);
      return ExitCode.directoryUnavailable;
    }
    if (err instanceof BackupError) {
      io.err(`stoney-backup ${name}: ${err.message} (code ${err.code}: ${err.codeText})`);
      return ExitCode.backupFailed;
    }
    io.err(`stoney-backup ${name}: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return ExitCode.internal;
  }
}
