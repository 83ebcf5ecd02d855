import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { BackupLayout } from '../domain/layout.js';
import { assertSafeName } from '../domain/names.js';
import type { RestoreRequest } from '../directory/types.js';
import type { StepContext } from './StepContext.js';
import { exists } from './durableFs.js';
import { startsWithPlaceholder } from './stateFile.js';

/**
 * What the restore steps share: the leaf's restore request, the target VM
 * name, and the restore's own retain directory
 * (<retain>/<vm-type>/<pool>/<vm>/<restore timestamp>/), next to — never
 * inside — the backup being restored.
 */
export interface RestoreWork {
  request: RestoreRequest;
  target: string;
  asNew: boolean;
  /** layout whose retainDir is this restore's working directory */
  work: BackupLayout;
}

export function workLayout(ctx: StepContext, retain: string): BackupLayout {
  return new BackupLayout({
    rootDirectory: ctx.settings.rootDirectory,
    retainDirectory: ctx.settings.retainDirectory,
    vmType: ctx.layout.vmType,
    pool: ctx.layout.pool,
    vm: ctx.vm.name,
    leaf: retain,
  });
}

export async function loadRestoreWork(ctx: StepContext): Promise<RestoreWork> {
  const request = await ctx.directory.getRestoreRequest(ctx.leafDn);
  if (!request?.retain) {
    throw new BackupError(`no restore in progress on ${ctx.leafDn} (unretainSmallFiles has not run)`, ReturnCode.wrongStateInformation);
  }
  const target = assertSafeName('restore target', request.target ?? ctx.vm.name);
  return { request, target, asNew: target !== ctx.vm.name, work: workLayout(ctx, request.retain) };
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
