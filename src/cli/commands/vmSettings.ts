import type { BackupDirectory, VmEntry } from '../../directory/types.js';
import type { BackupSettings } from '../../domain/settings.js';
import { ExitCode } from '../exitCodes.js';
import { CliError } from '../runtime.js';

/** The VM by name and its effective backup settings; an unknown VM is exit 5. */
export async function vmWithSettings(directory: BackupDirectory, name: string): Promise<{ vm: VmEntry; settings: BackupSettings }> {
  const vm = await directory.getVm(name);
  if (!vm) throw new CliError(`no VM ${name} in the directory`, ExitCode.notFound);
  return { vm, settings: (await directory.effectiveSettings(vm)).backup };
}
