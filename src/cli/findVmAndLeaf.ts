import type { BackupDirectory, LeafEntry, VmEntry } from '../directory/types.js';
import { ExitCode } from './exitCodes.js';
import { CliError } from './runtime.js';

/** The VM and one of its backups as named on the command line, or a not-found error that says where to look. */
export async function findVmAndLeaf(directory: Pick<BackupDirectory, 'getVm' | 'listLeaves'>, name: string, leafName: string): Promise<{ vm: VmEntry; leaf: LeafEntry }> {
  const vm = await directory.getVm(name);
  if (!vm) throw new CliError(`no VM ${name} in the directory`, ExitCode.notFound);
  const leaf = (await directory.listLeaves(name)).find((l) => l.leaf === leafName);
  if (!leaf) throw new CliError(`${name} has no backup ${leafName} (see stoney-backup list ${name})`, ExitCode.notFound);
  return { vm, leaf };
}
