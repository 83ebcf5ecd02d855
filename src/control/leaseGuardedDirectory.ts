import type { BackupDirectory } from '../directory/types.js';

/** The methods that only read (and close): everything else writes, so a method added later is guarded by default. */
const unguarded: ReadonlySet<string> = new Set<keyof BackupDirectory>([
  'baseDn', 'listVms', 'getVm', 'effectiveSettings', 'loadSite', 'readSiteEntry', 'listLeaves', 'listLeavesOfVms',
  'getLeaf', 'exportVmLdif', 'getRestoreRequest', 'close',
]);

/**
 * The directory as the active control daemon writes it: every write first
 * checks that this daemon still holds the control lease and fails at once
 * (without reaching the server) when it does not. So a daemon that lost the
 * lease — taken over, or the directory unreachable past its deadline —
 * stops writing before a standby may start, even while its batches still
 * run. The writes themselves stay compare-and-swaps (casMode) and
 * deterministic adds (createLeaf), so an overlap could not drive a step
 * twice or add a second leaf anyway.
 */
export function leaseGuardedDirectory(directory: BackupDirectory, assertHeld: () => void): BackupDirectory {
  return new Proxy(directory, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop);
      if (typeof value !== 'function' || typeof prop !== 'string' || unguarded.has(prop)) {
        return typeof value === 'function' ? value.bind(target) : value;
      }
      return (...args: unknown[]): unknown => {
        try {
          assertHeld();
        } catch (err) {
          return Promise.reject(err);
        }
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}
