import { BackupError } from '../../src/domain/errors.js';

/** The protocol return code `f` throws, or a text saying why there is none (so a test's diff says what happened). */
export function returnCodeOf(f: () => unknown): number | string {
  try {
    f();
  } catch (err) {
    return err instanceof BackupError ? err.code : `not a BackupError: ${String(err)}`;
  }
  return 'no error';
}
