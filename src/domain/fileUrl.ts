import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { BackupError } from './errors.js';
import { ReturnCode } from './returnCodes.js';

/**
 * Directory URLs in the settings (sstBackupRootDirectory, …) must be file://.
 * A bare absolute path is accepted too (the original accepted both for the RAM disk).
 */
export function directoryFromUrl(attribute: string, value: string): string {
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
  return path.normalize(fileURLToPath(url));
}
