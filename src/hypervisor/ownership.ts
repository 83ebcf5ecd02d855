import type { Logger } from 'pino';
import { run } from './exec.js';

/**
 * Owner and group come from the directory as names (root, vm-storage);
 * chown(1) resolves them through NSS, which Node's fs.chown cannot.
 */
export async function chownByName(target: string, owner: string, group: string, logger?: Logger): Promise<void> {
  await run('chown', [`${owner}:${group}`, '--', target], { logger, timeoutMs: 30_000 });
}
