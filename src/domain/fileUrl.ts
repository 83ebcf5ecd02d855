import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { BackupError } from './errors.js';
import { ReturnCode } from './returnCodes.js';

/**
 * Directory URLs in the settings (sstBackupRootDirectory, …) must be file://.
 * A bare absolute path is accepted too (the original accepted both for the RAM disk).
 */
export function directoryFromUrl(attribute: string, value: string): string {
  if (value.includes('\0')) {
    throw new BackupError(`${attribute}: ${JSON.stringify(value)} contains a NUL byte`, ReturnCode.unsupportedConfigurationParameter);
  }
  if (value.startsWith('/')) return path.normalize(value);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new BackupError(`${attribute}: ${JSON.stringify(value)} is not a URL`, ReturnCode.unsupportedConfigurationParameter);
  }
  if (url.protocol !== 'file:') {
    throw new BackupError(
      `${attribute}: ${JSON.stringify(value)} uses ${url.protocol.replace(/:$/, '')}://, only file:// is supported`,
      ReturnCode.unsupportedFileTransferProtocol,
    );
  }
  if (url.host !== '' && url.host !== 'localhost') {
    throw new BackupError(`${attribute}: ${JSON.stringify(value)} names host ${url.host}; only local file:/// URLs are supported`, ReturnCode.unsupportedFileTransferProtocol);
  }
  let p: string;
  try {
    p = fileURLToPath(url);
  } catch (err) {
    throw new BackupError(`${attribute}: ${JSON.stringify(value)} is not a usable path: ${(err as Error).message}`, ReturnCode.unsupportedConfigurationParameter);
  }
  if (p.includes('\0')) throw new BackupError(`${attribute}: ${JSON.stringify(value)} contains a NUL byte`, ReturnCode.unsupportedConfigurationParameter);
  return path.normalize(p);
}
