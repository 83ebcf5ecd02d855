import { ResultCodeError } from 'ldapts';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';

/** LDAP result codes after which trying again later may succeed. */
const retryableResultCodes = new Set([
  3, // timeLimitExceeded
  51, // busy
  52, // unavailable
  80, // other (slapd uses it for transient backend trouble)
]);

/**
 * A failed directory operation. `ldapCode` is the LDAP result code when the
 * server answered, undefined when the connection failed (then always retryable).
 */
export class DirectoryError extends BackupError {
  override name = 'DirectoryError';
  constructor(
    message: string,
    code: number,
    readonly ldapCode: number | undefined,
    options: { retryable?: boolean; cause?: unknown } = {},
  ) {
    super(message, code, options);
  }

  /** Wraps what ldapts threw; `what` says which operation on which DN. */
  static from(err: unknown, what: string, write: boolean): DirectoryError {
    if (err instanceof DirectoryError) return err;
    if (err instanceof ResultCodeError) {
      return new DirectoryError(
        `${what}: ${err.message} (LDAP result ${err.code})`,
        write ? ReturnCode.cannotSaveBackendEntry : ReturnCode.cannotConnectToBackend,
        err.code,
        { retryable: retryableResultCodes.has(err.code), cause: err },
      );
    }
    const message = err instanceof Error ? err.message : String(err);
    return new DirectoryError(`${what}: ${message}`, ReturnCode.cannotConnectToBackend, undefined, { retryable: true, cause: err });
  }
}

/** True for failures of the connection itself (no LDAP result came back). */
export function isConnectionFailure(err: unknown): boolean {
  if (err instanceof DirectoryError) return err.ldapCode === undefined;
  return !(err instanceof ResultCodeError);
}
