import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { exists } from './durableFs.js';
import type { StepContext } from './StepContext.js';

/**
 * What a daemon that died leaves in libvirt and on disk, for the recoveries:
 * a job (save, live snapshot, block commit) libvirtd still runs for it, and
 * state files it was writing in private directories.
 */

/** Wait until libvirt runs no job on the VM: a save or snapshot our dead process asked for may outlive it. */
export async function waitForDomainJob(ctx: StepContext): Promise<void> {
  const end = Date.now() + 30 * 60 * 1000;
  let logged = false;
  while (await ctx.virsh.domainJobActive(ctx.vm.name)) {
    if (!logged) ctx.logger.warn({ vm: ctx.vm.name, leaf: ctx.leaf }, 'recovery: libvirt still runs a job on the VM; waiting for it to end');
    logged = true;
    if (Date.now() > end) throw new BackupError('recovery: a libvirt job on the VM did not end within 30 minutes', ReturnCode.cannotLockMachine);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** State files a snapshot was writing in its private directories (`.stoney-state-*`) below `parent`. */
export async function privateStateFiles(parent: string, fileName: string): Promise<string[]> {
  const entries = await readdir(parent, { withFileTypes: true }).catch(() => []);
  const found: string[] = [];
  for (const e of entries) {
    if (!e.isDirectory() || !e.name.startsWith('.stoney-state-')) continue;
    const f = path.join(parent, e.name, fileName);
    if (await exists(f)) found.push(f);
  }
  return found;
}
