import path from 'node:path';
import type { Logger } from 'pino';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { assertSafeName } from '../domain/names.js';
import type { DomainDisk } from '../hypervisor/domainXml.js';

/** A disk that the backup moves into retain and replaces by an overlay. */
export interface BackupDisk {
  target: string;
  /** live image path */
  source: string;
  format: string;
  /** file name in retain / backup dirs: the image's basename */
  fileName: string;
}

export function isBelow(root: string, p: string): boolean {
  const rel = path.relative(path.resolve(root), path.resolve(p));
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}

/**
 * The file-backed disks of a domain that a backup covers. cdroms, floppies
 * and non-file disks are skipped (and logged). Refuses — before anything is
 * touched — disks outside the image roots, disks whose chain already runs
 * into retain (an unmerged earlier backup), and two disks with one basename.
 */
export function selectBackupDisks(disks: DomainDisk[], imageRoots: string[], retainRoot: string, logger: Logger): BackupDisk[] {
  const selected: BackupDisk[] = [];
  for (const d of disks) {
    if (d.device !== 'disk' || d.type !== 'file' || d.source === undefined) {
      logger.info({ target: d.target, device: d.device, type: d.type }, 'disk skipped: not a file-backed disk');
      continue;
    }
    if (isBelow(retainRoot, d.source)) {
      throw new BackupError(`disk ${d.target} runs on ${d.source} in retain: an earlier backup was not merged`, ReturnCode.chainStillReferencesRetain);
    }
    if (!path.isAbsolute(d.source) || !imageRoots.some((r) => isBelow(r, d.source as string))) {
      throw new BackupError(`disk ${d.target} (${d.source}) is outside the image roots ${imageRoots.join(', ')}`, ReturnCode.diskOutsideImageRoots);
    }
    const stale = d.backingChain.find((b) => isBelow(retainRoot, b));
    if (stale !== undefined) {
      throw new BackupError(
        `disk ${d.target} still has ${stale} in its backing chain: an earlier backup was not merged`,
        ReturnCode.chainStillReferencesRetain,
      );
    }
    const fileName = assertSafeName('disk image file name', path.basename(d.source));
    if (selected.some((s) => s.fileName === fileName)) {
      throw new BackupError(`two disks share the file name ${fileName}; the backup layout needs unique names`, ReturnCode.unsupportedConfigurationParameter);
    }
    selected.push({ target: d.target, source: d.source, format: d.format ?? 'raw', fileName });
  }
  return selected;
}
