import { runBackupBatch } from '../control/runBackupBatch.js';
import type { BackupDirectory, LeafEntry, VmEntry } from '../directory/types.js';
import { ExitCode } from './exitCodes.js';
import { leafChangeLine, resultLines, summarize } from './report.js';
import type { Runtime } from './runtime.js';

/**
 * What `backup` and `kvmbackup` share: drive one batch with progress on
 * stderr, stop on SIGINT/SIGTERM, print the result (text or JSON via
 * `json`) and turn it into an exit code.
 */
export async function runBatchAndReport(
  rt: Runtime,
  directory: BackupDirectory,
  vms: VmEntry[],
  leaf: string,
  json: ((leaves: LeafEntry[]) => unknown) | undefined,
): Promise<number> {
  rt.io.err(`backing up ${vms.map((v) => v.name).join(', ')} as ${leaf}`);
  const leaves = await driveBatch(rt, directory, vms, leaf);
  if (!leaves) return ExitCode.interrupted;
  if (json) rt.io.out(JSON.stringify(json(leaves), null, 2));
  else resultLines(leaves).forEach((l) => rt.io.out(l));
  return summarize(leaves).failed.length ? ExitCode.backupFailed : ExitCode.ok;
}

/** Drive one batch (new or left in the middle) with its mode changes on stderr; undefined when SIGINT/SIGTERM stopped it. */
export async function driveBatch(rt: Runtime, directory: BackupDirectory, vms: VmEntry[], leaf: string): Promise<LeafEntry[] | undefined> {
  const stopped = rt.untilSignal();
  return Promise.race([
    runBackupBatch({ directory, vms, leaf, policy: rt.config.policy, logger: rt.logger, signal: rt.abort.signal, onLeafChange: (l) => rt.io.err(leafChangeLine(l)) }),
    stopped.then(() => undefined),
  ]);
}
