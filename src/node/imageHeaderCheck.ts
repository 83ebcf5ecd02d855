import path from 'node:path';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { isImageFormat, type QemuImg } from '../hypervisor/QemuImg.js';
import { isBelow } from './backupDisks.js';
import { assertNoSymlinkBelow } from './safeFs.js';

/**
 * An image from a backup is read in the format its definition gives and its
 * header is checked before anything opens it for real: a raw guest disk may
 * hold a qcow2 header naming /etc/shadow, a device or an nbd:// URL as its
 * backing file. Only a backing file inside the image roots (a linked
 * clone's template) with a declared format is accepted, and no external
 * data file. Nothing here opens the backing or data file.
 */
export async function assertSafeImageHeader(qemuImg: QemuImg, file: string, format: string | undefined, imageRoots: readonly string[]): Promise<void> {
  if (!isImageFormat(format)) {
    throw new BackupError(`${file}: image format ${JSON.stringify(format)} is not raw or qcow2`, ReturnCode.unsafeImageHeader);
  }
  let info;
  try {
    info = await qemuImg.info(file, { format });
  } catch (err) {
    throw new BackupError(`${file} cannot be read as ${format}, the format its definition gives: ${errorMessage(err)}`, ReturnCode.unsafeImageHeader, { cause: err });
  }
  if (info.format !== format) throw new BackupError(`${file} reads as ${info.format}, not ${format}`, ReturnCode.unsafeImageHeader);
  if (info.dataFile !== undefined) {
    throw new BackupError(`${file} names an external data file ${JSON.stringify(info.dataFile)}; refusing it`, ReturnCode.unsafeImageHeader);
  }
  const b = info.backingFile;
  if (b === undefined) return;
  if (!path.isAbsolute(b) || path.normalize(b) !== b || !imageRoots.some((r) => isBelow(r, b))) {
    throw new BackupError(`${file} names ${JSON.stringify(b)} as its backing file, which is not inside the image roots`, ReturnCode.unsafeImageHeader);
  }
  if (!isImageFormat(info.backingFormat)) {
    throw new BackupError(`${file} names its backing file ${b} without a raw or qcow2 format`, ReturnCode.unsafeImageHeader);
  }
  // Inside the roots by its name is not enough: QEMU follows a symlinked component or file wherever it points.
  const root = imageRoots.find((r) => isBelow(r, b))!;
  try {
    await assertNoSymlinkBelow(root, b, 'file');
  } catch (err) {
    throw new BackupError(`${file} names ${b} as its backing file, which leads out of the image roots: ${errorMessage(err)}`, ReturnCode.unsafeImageHeader, { cause: err });
  }
}
