import { lstat, mkdir, readdir, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { BackupError } from '../domain/errors.js';
import { ReturnCode } from '../domain/returnCodes.js';
import type { BackupLayout } from '../domain/layout.js';
import { openNoFollow } from '../hypervisor/openNoFollow.js';
import { chownByName } from '../hypervisor/ownership.js';
import { assertNoSymlinkBelow, createExclusive, mkdirBelow } from './safeFs.js';

/**
 * A restore works where the original implementation and its web UI expect
 * it: in the leaf's own retain directory `<retain>/<vm-type>/<storage-pool>/<vm>/<leaf>/`.
 * That directory is group-writable (the web UI writes the user's LDIF
 * there; sticky, so that nobody else renames root's files) and may hold what others left, so this program marks the
 * directories it makes with RESTORE_MARKER (created exclusively in a
 * directory it has just created) and only ever removes, in a marked
 * directory, the files a restore makes: never anything else.
 */
export const RESTORE_MARKER = '.stoney-restore';

/** What the restore's directory may hold, and who may remove it. */
type EntryKind =
  /** made by the restore (or by the web UI as its decision): removed when the restore ends or restarts */
  | 'disposable'
  /** the live VM's definition, state and images a failed rollback left: kept for a human (docs/restore-runbook.md) */
  | 'rollback'
  /** nothing a restore makes: never touched */
  | 'foreign';

/**
 * Written (durably) just before the decided VM is started: from then on a
 * guest may have run on the restored images, and recovery never puts the
 * backup's memory on them again nor rolls them back.
 */
export const DECIDED_STARTING = 'decided.starting';
const OWN_FILES = ['conflicts.json', 'decided.xml', 'decided.ldif', DECIDED_STARTING];

/** A 0700 directory of the restore's (mkdtemp) for what must not be written in the shared directory. */
export const PRIVATE_DIR_PREFIX = '.stoney-private-';

function kindOf(layout: BackupLayout, name: string, type: 'file' | 'directory' | 'symlink' | 'other'): EntryKind {
  // Private directories: a `virsh save`'s before its state is moved to live.state, and PRIVATE_DIR_PREFIX.
  if (name.startsWith('.stoney-state-') || name.startsWith(PRIVATE_DIR_PREFIX)) return type === 'directory' ? 'disposable' : 'foreign';
  // The decision's place: whatever the web UI's side put there (a symlink is unlinked, its target untouched).
  if (name === layout.ldifFileName && (type === 'file' || type === 'symlink')) return 'disposable';
  if (type !== 'file') return 'foreign';
  const base = name.endsWith('.partial') ? name.slice(0, -'.partial'.length) : name;
  // A backup's file (`<name>.<leaf>`; the restore never moves a live image aside under such a name).
  if (base === RESTORE_MARKER || base.endsWith(`.${layout.leaf}`) || OWN_FILES.includes(base)) return 'disposable';
  if (base === 'live.xml' || base === 'live.state' || base.startsWith('live-')) return name === base ? 'rollback' : 'disposable';
  if (base === layout.ldifFileName) return 'disposable'; // its .partial
  return 'foreign';
}

/** The leaf's retain directory is a restore's (made by this program): a real directory holding the marker. */
export async function isRestoreWorkDir(layout: BackupLayout, retainRoot?: string): Promise<boolean> {
  if (retainRoot !== undefined) await assertNoSymlinkBelow(retainRoot, layout.retainDir, 'directory');
  const dir = await lstat(layout.retainDir).catch(() => undefined);
  if (!dir?.isDirectory()) return false;
  const marker = await lstat(path.join(layout.retainDir, RESTORE_MARKER)).catch(() => undefined);
  return marker?.isFile() ?? false;
}

/**
 * Remove what a restore made in its (marked) directory and, when nothing
 * else is left, the directory. With `keepRollback` the live VM's files a
 * failed rollback left stay. Returns the names left behind (the marker then
 * stays too: the directory is still this program's, and a new restore of
 * the leaf refuses to start in it).
 */
export async function removeRestoreWorkDir(layout: BackupLayout, retainRoot: string, o: { keepRollback: boolean; logger: Logger }): Promise<string[]> {
  if (!(await isRestoreWorkDir(layout, retainRoot))) return [];
  const dir = layout.retainDir;
  const left: string[] = [];
  const entries = await readdir(dir, { withFileTypes: true });
  for (const e of entries) {
    if (e.name === RESTORE_MARKER) continue;
    const kind = kindOf(layout, e.name, e.isFile() ? 'file' : e.isDirectory() ? 'directory' : e.isSymbolicLink() ? 'symlink' : 'other');
    if (kind === 'foreign' || (kind === 'rollback' && o.keepRollback)) left.push(e.name);
    else await rm(path.join(dir, e.name), { recursive: e.isDirectory(), force: true });
  }
  if (left.length > 0) {
    o.logger.warn({ retainDir: dir, left }, 'the restore directory holds files a restore does not remove (a failed rollback, or files this program did not make); left for a human, see docs/restore-runbook.md');
    return left.sort();
  }
  await rm(path.join(dir, RESTORE_MARKER), { force: true });
  await rmdir(dir);
  return [];
}

/**
 * Make the restore's directory: fresh and marked. Leftovers this program
 * made for an earlier restore of the same leaf are removed first; anything
 * else there (a backup's unremoved retain files, a foreign file, a failed
 * rollback's files) stops the restore with 64, and nothing is touched.
 */
export async function createRestoreWorkDir(
  layout: BackupLayout,
  o: { retainRoot: string; mode: number; owner: string; group: string; logger: Logger },
): Promise<void> {
  const dir = layout.retainDir;
  await mkdirBelow(o.retainRoot, path.dirname(dir), o.mode);
  const made = await mkdir(dir, { mode: o.mode }).then(() => true, (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EEXIST') throw err;
    return false;
  });
  if (!made) {
    await assertNoSymlinkBelow(o.retainRoot, dir, 'directory');
    if (await isRestoreWorkDir(layout)) {
      const left = await removeRestoreWorkDir(layout, o.retainRoot, { keepRollback: true, logger: o.logger });
      if (left.length > 0) throw foreignFiles(dir, left);
      o.logger.info({ retainDir: dir }, 'removed what an earlier restore of this backup left');
    } else {
      const names = await readdir(dir);
      if (names.length > 0) throw foreignFiles(dir, names);
      await rmdir(dir); // empty: nothing of anyone's is lost, and the directory gets this restore's mode
    }
    await mkdir(dir, { mode: o.mode });
  }
  await chownByName(dir, o.owner, o.group, o.logger);
  await makeSticky(dir);
  const marker = await createExclusive(path.join(dir, RESTORE_MARKER), 0o644);
  try {
    await marker.writeFile(`${JSON.stringify({ leaf: layout.leaf, vm: layout.vm, createdAt: new Date().toISOString() })}\n`);
  } finally {
    await marker.close();
  }
}

/**
 * The directory is writable by the image group (the web UI writes its
 * decision there), which without the sticky bit could rename or replace
 * root's files between their check and their use (an image checked, then
 * swapped before it is moved over the live disk). With it, only the web
 * UI's own files are the web UI's to change.
 */
async function makeSticky(dir: string): Promise<void> {
  const h = await openNoFollow(dir, 'directory');
  try {
    const { mode } = await h.stat();
    await h.chmod((mode & 0o777) | 0o1000);
  } finally {
    await h.close();
  }
}

function foreignFiles(dir: string, names: string[]): BackupError {
  const shown = names.sort().slice(0, 8).join(', ');
  return new BackupError(
    `${dir} holds files a restore did not make or must not remove (${shown}${names.length > 8 ? ', …' : ''}); nothing was touched: move them away (see docs/restore-runbook.md) and start the restore again`,
    ReturnCode.restoreDirectoryNotEmpty,
  );
}
