import { open } from 'node:fs/promises';
import { NO_STATE_MARKER } from '../domain/layout.js';

/**
 * Whether a state file is the original implementation's placeholder (the VM
 * was off, there is no memory state). Reads only the first bytes: a state
 * file is as large as the guest's RAM, far beyond what a string can hold.
 */
export async function startsWithPlaceholder(file: string): Promise<boolean> {
  const f = await open(file, 'r');
  try {
    const head = Buffer.alloc(Buffer.byteLength(NO_STATE_MARKER));
    const { bytesRead } = await f.read(head, 0, head.length, 0);
    return bytesRead === head.length && head.toString('utf8') === NO_STATE_MARKER;
  } finally {
    await f.close();
  }
}
