import { readdir, readFile, rmdir } from 'node:fs/promises';
import { BackupError, errorMessage } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import { KEEP_FAILED_RECORD } from '../domain/layout.js';
import { writeFileDurably } from './durableFs.js';
import { dropKeptFiles } from './keepInBackup.js';
import type { StepContext } from './StepContext.js';

/**
 * A live backup whose frozen image could not be kept (no room, a failed
 * copy) has failed, yet its merge must still commit every overlay. The
 * failure is recorded durably in retain before the first such commit, so
 * that a merge run again after a crash (recovery at start) fails the same
 * way — it cannot keep an image the commit has already changed — and retain
 * never turns the backup into a finished one without that disk. What the
 * backup had already kept goes: without a manifest it restores nothing, and
 * on a full backup filesystem it would stay in the way until a later backup
 * succeeds.
 */
export async function recordKeepFailure(ctx: StepContext, err: unknown): Promise<void> {
  const { layout, logger, vm } = ctx;
  const code = err instanceof BackupError ? err.code : ReturnCode.cannotCopyImage;
  await writeFileDurably(layout.retainPath(KEEP_FAILED_RECORD), `${JSON.stringify({ code, message: errorMessage(err) })}\n`);
  const dropped = await dropKeptFiles(ctx, await readdir(layout.retainDir));
  await rmdir(layout.backupDir).catch(() => undefined); // only when empty
  logger.error({ vm: vm.name, leaf: ctx.leaf, code, dropped, err: errorMessage(err) }, 'a frozen image could not be kept: this backup fails; its overlays are committed all the same');
}

/** The failure recordKeepFailure wrote for this backup, as the error to fail its merge or retain with; undefined when there is none. */
export async function recordedKeepFailure(ctx: StepContext): Promise<BackupError | undefined> {
  const text = await readFile(ctx.layout.retainPath(KEEP_FAILED_RECORD), 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (text === undefined) return undefined;
  let recorded: { code?: unknown; message?: unknown } = {};
  try {
    recorded = JSON.parse(text) as typeof recorded;
  } catch {
    // Torn or edited: the backup has failed all the same.
  }
  const code = typeof recorded.code === 'number' && Number.isInteger(recorded.code) && recorded.code > 0 && recorded.code < 256 ? recorded.code : ReturnCode.cannotCopyImage;
  const message = typeof recorded.message === 'string' ? recorded.message.slice(0, 1000) : 'reason not readable';
  return new BackupError(`a frozen image of this backup could not be kept earlier (${message}); the backup has failed`, code);
}
