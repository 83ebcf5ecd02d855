import { BackupError } from '../errors.js';
import { ReturnCode } from '../returnCodes.js';
import { attributeValues, type LdifEntry } from './ldifRecords.js';
import { relKey, splitDn, vmSubtree } from './vmSubtree.js';
import { applyDecisions, checkConsistency, computeConflicts, type DecidedRestore, type RestoreInputs, type Side } from './restoreConflicts.js';

/**
 * The original web UI records the user's decision as a whole LDIF of the
 * VM's subtree (`<vm>.ldif` in the restore's directory). The conflict engine
 * is applied on top of it: for every difference between the backup and the
 * live VM, the side whose directory values the file holds is the side taken,
 * so a linked fact — memory, vCPUs, a disk's path, a MAC — follows in the
 * domain definition too; an item the file does not settle (values of
 * neither side, parts only the XML has) takes the backup. The directory
 * gets the file as it is (its other edits included); a file that still
 * contradicts the decided domain is refused with 33.
 */
export function applyDecisionFile(inputs: RestoreInputs, file: readonly LdifEntry[]): DecidedRestore {
  const index = (entries: readonly LdifEntry[] | undefined) => new Map(vmSubtree(inputs.vmDn, entries ?? []).map((e) => [e.key, e.entry]));
  const sides = { file: index(file), backup: index(inputs.backupLdif), live: index(inputs.liveLdif) };
  const valuesAt = (side: Map<string, LdifEntry>, relDn: string, attribute: string | undefined): string[] | undefined => {
    const entry = side.get(relKey(relDn === '' ? [] : splitDn(relDn)));
    if (entry === undefined) return undefined;
    return attribute === undefined ? [] : [...attributeValues(entry, attribute)].sort();
  };
  const same = (a: string[] | undefined, b: string[] | undefined): boolean => (a === undefined || b === undefined ? a === b : a.join('\u0000') === b.join('\u0000'));
  const overrides: Record<string, Side> = {};
  for (const item of computeConflicts(inputs)) {
    const governed = item.governs.ldap ?? [];
    if (governed.length === 0 || inputs.liveLdif === undefined) continue;
    const fileIsLive = governed.every((g) => same(valuesAt(sides.file, g.relDn, g.attribute), valuesAt(sides.live, g.relDn, g.attribute)));
    const fileIsBackup = governed.every((g) => same(valuesAt(sides.file, g.relDn, g.attribute), valuesAt(sides.backup, g.relDn, g.attribute)));
    if (fileIsLive && !fileIsBackup) overrides[item.id] = 'live';
  }
  const decided = applyDecisions(inputs, { prefer: 'backup', overrides });
  const ldif = vmSubtree(inputs.vmDn, file).map((e) => e.entry);
  const problems = checkConsistency(inputs.vmDn, ldif, decided.xml);
  if (problems.length > 0) {
    throw new BackupError(`the decision LDIF contradicts the domain definition decided from it (a value of neither the backup nor the live VM?): ${problems.join('; ')}`, ReturnCode.backendXmlInconsistency);
  }
  return { ...decided, ldif };
}
