import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { FOLD_JOURNAL } from '../domain/layout.js';
import { listIterationDirs } from './backupIterations.js';
import { chainMembers, checkChainMembers, type ChainMember } from './materializeChain.js';
import { digestKindOf, digestMismatch, fileDigest } from './fileDigest.js';
import type { StepContext } from './StepContext.js';

export interface IterationReport {
  leaf: string;
  /** full / incremental: a finished backup; unfinished: no manifest (in progress or failed, never restored) */
  kind: 'full' | 'incremental' | 'unfinished' | 'being removed';
  storedBytes: number;
  /** for incremental backups: every backup its images need, nearest first */
  needs: string[];
  problems: string[];
}

/**
 * Re-read every file of the VM's finished backups (or of one, with what its
 * chains need) against the manifests: size and digest, and for disk images
 * the header and `qemu-img check`; incremental images with every member of
 * their chain. Read-only: an interrupted rotation is reported, not finished.
 */
export async function verifyBackups(ctx: Pick<StepContext, 'settings' | 'layout' | 'qemuImg'>, onlyLeaf?: string): Promise<IterationReport[]> {
  const dirs = await listIterationDirs(ctx.settings.rootDirectory, ctx.layout.vmBackupDir);
  const checked = new Map<string, string[]>(); // member path → its problems (each file read once)
  const checkMembers = async (members: ChainMember[]): Promise<string[]> => {
    const out: string[] = [];
    for (const m of members) {
      if (!checked.has(m.path)) checked.set(m.path, await checkChainMembers(ctx, [m]));
      out.push(...(checked.get(m.path) ?? []));
    }
    return out;
  };
  const reports: IterationReport[] = [];
  for (const d of dirs) {
    if (onlyLeaf !== undefined && d.leaf !== onlyLeaf) continue;
    const report: IterationReport = { leaf: d.leaf, kind: 'unfinished', storedBytes: 0, needs: [], problems: [] };
    reports.push(report);
    if (d.beingRemoved) {
      report.kind = 'being removed';
      report.problems.push('an interrupted rotation is removing it (the next backup, prune, delete or restore of the VM completes that)');
      continue;
    }
    if (await lstat(path.join(d.dir, FOLD_JOURNAL)).then(() => true, () => false)) {
      report.problems.push('an interrupted rotation left a fold to finish (the next backup, prune, delete or restore of the VM completes it)');
    }
    if (d.manifest === undefined) continue;
    report.kind = d.manifest.files.some((f) => f.backing) ? 'incremental' : 'full';
    const listed = new Set(d.manifest.files.map((f) => f.name));
    for (const n of await readdir(d.dir)) {
      if (n.endsWith(`.${d.leaf}`) && !listed.has(n)) report.problems.push(`${n} is not in the manifest`);
    }
    for (const f of d.manifest.files) {
      report.storedBytes += f.size;
      const link = { leaf: d.leaf, name: f.name };
      if (f.format === 'qcow2' || f.backing) {
        try {
          const members = await chainMembers(ctx, link);
          report.needs.push(...members.slice(1).map((m) => m.link.leaf).filter((l) => !report.needs.includes(l)));
          report.problems.push(...(await checkMembers(members)));
        } catch (err) {
          report.problems.push(`${f.name}: ${(err as Error).message}`);
        }
        continue;
      }
      try {
        const mismatch = digestMismatch(await fileDigest(path.join(d.dir, f.name), digestKindOf(f)), f);
        if (mismatch) report.problems.push(`${f.name} does not match its manifest (${mismatch})`);
      } catch (err) {
        report.problems.push(`${f.name}: ${(err as Error).message}`);
      }
    }
  }
  return reports;
}
