import type { LeafEntry } from '../../src/directory/types.js';
import type { ModeWrite } from '../../src/control/decideBatch.js';

/** A leaf as the directory would return it, for the pure decision functions. */
export function leafEntry(vm: string, leaf: string, mode: string, modifiedAt: Date, over: Partial<LeafEntry> = {}): LeafEntry {
  return {
    dn: `ou=${leaf},ou=backup,sstVirtualMachine=${vm},ou=virtual machines,ou=virtualization,ou=services,o=test`,
    vm,
    leaf,
    mode,
    state: '0',
    returnValue: undefined,
    executionTime: {},
    modifiedAt,
    ...over,
  };
}

/** The writes as (vm, from → to, state, returnValue), easier to compare than whole objects. */
export function briefWrites(writes: ModeWrite[]): string[] {
  return writes.map((w) => `${w.vm}: ${w.expected} → ${w.next} (${w.state}${w.returnValue === undefined ? '' : `, ${w.returnValue}`})`);
}
