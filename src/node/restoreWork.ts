import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import type { BackupLayout } from '../domain/layout.js';
import { assertSafeName } from '../domain/names.js';
import type { RestoreRequest } from '../directory/types.js';
import type { StepContext } from './StepContext.js';
import { exists } from './durableFs.js';
import { startsWithPlaceholder } from './stateFile.js';
import { isRestoreWorkDir } from './restoreWorkDir.js';

/**
 * What the restore steps share: the leaf's restore request (empty when a
 * client of the original protocol, e.g. the original web UI, started the
 * restore), the target VM name, and the restore's working directory — the
 * original's: the leaf's own retain directory
 * `<retain>/<vm-type>/<storage-pool>/<vm>/<leaf>/`, its files named
 * `<file>.<leaf>` as in the backup (see restoreWorkDir.ts).
 */
export interface RestoreWork {
  request: RestoreRequest;
  target: string;
  asNew: boolean;
  /** the leaf's layout: its retainDir is the restore's working directory */
  work: BackupLayout;
  /** a file of the backup as unretained into the working directory: `<name>.<leaf>` */
  unretained: (name: string) => string;
}

export function unretainedPath(layout: BackupLayout, name: string): string {
  return layout.retainPath(`${assertSafeName('file name', name)}.${layout.leaf}`);
}

export async function loadRestoreWork(ctx: StepContext): Promise<RestoreWork> {
  const work = ctx.layout;
  if (!(await isRestoreWorkDir(work, ctx.settings.retainDirectory))) {
    throw new BackupError(`no restore in progress on ${ctx.leafDn}: ${work.retainDir} is not a restore work directory (unretainSmallFiles has not run)`, ReturnCode.wrongStateInformation);
  }
  const request = (await ctx.directory.getRestoreRequest(ctx.leafDn)) ?? {};
  const target = assertSafeName('restore target', request.target ?? ctx.vm.name);
  return { request, target, asNew: target !== ctx.vm.name, work, unretained: (name) => unretainedPath(work, name) };
}

/** The original implementation's marker: the VM was off, there is no memory state. */
export async function isPlaceholderState(file: string): Promise<boolean> {
  if (!(await exists(file))) throw new BackupError(`${file} is missing`, ReturnCode.missingNecessaryFiles);
  return startsWithPlaceholder(file);
}

/** DN of a VM of another name in the same place: the first RDN replaced. */
export function siblingVmDn(vmDn: string, name: string): string {
  const comma = vmDn.indexOf(',');
  return `sstVirtualMachine=${name}${comma >= 0 ? vmDn.slice(comma) : ''}`;
}
