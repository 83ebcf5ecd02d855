import { BackupError } from '../errors.js';
import { ReturnCode } from '../returnCodes.js';
import { isLeafName } from '../leafName.js';
import { isSafeName } from '../names.js';
import type { RestoreRequest } from '../../directory/types.js';
import { decisionsFrom } from './restoreConflicts.js';

/**
 * A leaf's restore request (the JSON in `ou=restore`'s description), read
 * field by field: any directory writer can put text there, and the root
 * node daemon takes the restore target (a VM name it defines, disk names it
 * derives) and the retain subdirectory from it. Unknown fields are dropped;
 * a field of the wrong shape refuses the request with 39 (an unsafe target
 * name with the unsafe-name code).
 */
export function parseRestoreRequest(json: string, where: string): RestoreRequest {
  const bad = (what: string, cause?: unknown, code: number = ReturnCode.unsupportedConfigurationParameter): BackupError =>
    new BackupError(`${where}: the restore request ${what}`, code, cause === undefined ? undefined : { cause });
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (err) {
    throw bad('is not JSON', err);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('is not a JSON object');
  const o = raw as Record<string, unknown>;
  const request: RestoreRequest = {};
  if (o['target'] !== undefined) {
    if (typeof o['target'] !== 'string') throw bad('has a target that is not a string');
    if (!isSafeName(o['target'])) throw bad(`names the restore target ${JSON.stringify(o['target']).slice(0, 80)}, which is not a safe VM name`, undefined, ReturnCode.unsafeName);
    request.target = o['target'];
  }
  for (const key of ['retain', 'requestedAt'] as const) {
    const v = o[key];
    if (v === undefined) continue;
    if (typeof v !== 'string' || !isLeafName(v)) throw bad(`has a ${key} that is not a YYYYMMDDTHHMMSSZ time: ${JSON.stringify(v)?.slice(0, 40)}`);
    request[key] = v;
  }
  if (o['conflicts'] !== undefined) {
    if (!Array.isArray(o['conflicts'])) throw bad('has conflicts that are not a list');
    request.conflicts = o['conflicts'];
  }
  if (o['decisions'] !== undefined) {
    try {
      request.decisions = decisionsFrom(o['decisions']);
    } catch (err) {
      throw bad(`has unusable decisions: ${(err as Error).message}`, err);
    }
  }
  return request;
}
