import { lstat } from 'node:fs/promises';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import type { BackupLayout } from '../domain/layout.js';
import { attributeValues, parseLdif, type LdifEntry } from '../domain/restore/ldifRecords.js';
import { isBackupSubtree, relKey, rdnsBelow } from '../domain/restore/vmSubtree.js';
import { openRegularForRead } from './safeFs.js';
import type { RestoreInputs } from '../domain/restore/restoreConflicts.js';
import { applyDecisionFile } from '../domain/restore/decisionFile.js';

/** A VM's subtree is a handful of entries: anything near this size is not one. */
export const DECISION_LDIF_MAX_BYTES = 1024 * 1024;

function refused(file: string, why: string, cause?: unknown): BackupError {
  return new BackupError(`the decision ${file} is refused: ${why}; nothing live was touched`, ReturnCode.unsafeDecisionLdif, cause === undefined ? undefined : { cause });
}

/**
 * The original web UI's decision: when the user starts the restore it copies
 * `<vm>.ldif.<leaf>` (the backup's LDIF, possibly edited) to `<vm>.ldif` in
 * the restore's directory, and that file is the VM's directory subtree to
 * restore. Undefined when there is no such file.
 *
 * The directory is group-writable, so the file is untrusted: opened without
 * following a symlink, a regular file only (61 otherwise), at most
 * DECISION_LDIF_MAX_BYTES, and every entry must be the VM's entry or below
 * it — never its ou=backup, never twice, the VM entry present and naming
 * this VM (65 otherwise). What it says about the disks, memory, CPUs and
 * MACs is checked against the domain XML later by the conflict engine.
 */
export async function readDecisionLdif(work: BackupLayout, vmDn: string): Promise<LdifEntry[] | undefined> {
  const file = work.retainPath(work.ldifFileName);
  if (!(await lstat(file).then(() => true, () => false))) return undefined;
  const h = await openRegularForRead(file);
  let text: string;
  try {
    const { size } = await h.stat();
    if (size > DECISION_LDIF_MAX_BYTES) throw refused(file, `${size} bytes, more than ${DECISION_LDIF_MAX_BYTES}`);
    // Read at most the limit even if it grows meanwhile.
    const buf = Buffer.alloc(DECISION_LDIF_MAX_BYTES + 1);
    const { bytesRead } = await h.read(buf, 0, buf.length, 0);
    if (bytesRead > DECISION_LDIF_MAX_BYTES) throw refused(file, `more than ${DECISION_LDIF_MAX_BYTES} bytes`);
    text = buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await h.close();
  }
  let entries: LdifEntry[];
  try {
    entries = parseLdif(text);
  } catch (err) {
    throw refused(file, errorMessage(err), err);
  }
  checkVmSubtreeOnly(file, vmDn, entries);
  return entries;
}

function checkVmSubtreeOnly(file: string, vmDn: string, entries: readonly LdifEntry[]): void {
  const seen = new Set<string>();
  for (const e of entries) {
    const rdns = rdnsBelow(e.dn, vmDn);
    if (rdns === undefined) throw refused(file, `entry ${JSON.stringify(e.dn)} is not in the subtree of ${vmDn}`);
    if (isBackupSubtree(vmDn, e.dn)) throw refused(file, `entry ${JSON.stringify(e.dn)} is in the VM's ou=backup, which a restore never writes`);
    const key = relKey(rdns);
    if (seen.has(key)) throw refused(file, `entry ${JSON.stringify(e.dn)} appears twice`);
    seen.add(key);
  }
  const vm = entries.find((e) => rdnsBelow(e.dn, vmDn)?.length === 0);
  if (!vm) throw refused(file, `it has no entry ${vmDn}`);
  const rdnValue = /^[^=]*=(.*?)(?<!\\),/.exec(vmDn)?.[1];
  const names = attributeValues(vm, 'sstVirtualMachine');
  if (names.length > 0 && (names.length !== 1 || names[0] !== rdnValue)) {
    throw refused(file, `the VM entry's sstVirtualMachine ${JSON.stringify(names)} is not ${JSON.stringify(rdnValue)}`);
  }
}

/**
 * The decision, when there is one, decided as the restore will decide it
 * (applyDecisionFile: linked facts follow the side the file took; 33 when it
 * still contradicts the domain), so that a refused one costs no copy of the
 * large files.
 */
export async function checkDecisionLdif(work: BackupLayout, inputs: RestoreInputs): Promise<void> {
  const decided = await readDecisionLdif(work, inputs.vmDn);
  if (decided) applyDecisionFile(inputs, decided);
}
