import { BackupError } from './errors.js';
import { ReturnCode } from './returnCodes.js';

/**
 * Names from the directory (VM names, pool UUIDs, VM types, disk targets) end
 * up in paths and command arguments. Allow only what a safe single path
 * component looks like: no slash, no leading dot or dash, no control chars.
 */
const safe = /^[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,127}$/;

export function isSafeName(s: string): boolean {
  return safe.test(s) && !s.includes('..');
}

export function assertSafeName(what: string, s: string | undefined): string {
  if (s === undefined || !isSafeName(s)) {
    throw new BackupError(
      `${what} ${JSON.stringify(s)} is not a safe name (letters, digits and _ . : @ + -, not starting with . or -)`,
      ReturnCode.unsafeName,
    );
  }
  return s;
}
