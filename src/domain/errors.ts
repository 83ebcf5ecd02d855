import { ReturnCode, describeReturnCode } from './returnCodes.js';

/**
 * A failure of a backup step. Carries the protocol's return code (written to
 * sstProvisioningReturnValue) and whether retrying later may succeed.
 */
export class BackupError extends Error {
  override name = 'BackupError';
  constructor(
    message: string,
    readonly code: number = ReturnCode.undefinedError,
    readonly options: { retryable?: boolean; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
  }
  get retryable(): boolean {
    return this.options.retryable ?? false;
  }
  get codeText(): string {
    return describeReturnCode(this.code);
  }
}

/** Bad input from the user or the directory: shown as is, never a stack trace. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export function errorCode(err: unknown): number {
  return err instanceof BackupError ? err.code : ReturnCode.undefinedError;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
