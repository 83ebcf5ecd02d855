import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { parseChainLink, type ChainLink, type Iteration } from '../domain/backupChain.js';
import { isLeafName } from '../domain/leafName.js';
import { isSafeName } from '../domain/names.js';
import { MANIFEST_NAME, ROTATION_MARKER } from '../domain/layout.js';
import { isImageFormat, type ImageFormat } from '../hypervisor/QemuImg.js';
import { assertNoSymlinkBelow, openRegularForRead } from './safeFs.js';
import type { DigestedFile } from './fileDigest.js';

/** One file of a finished backup, as its manifest lists it: with its size and content digest (fileDigest.ts). */
export type ManifestFile = ManifestFileFacts & DigestedFile;

interface ManifestFileFacts {
  /** final name in the backup directory, `<file>.<leaf>` */
  name: string;
  /** disk images: the format the file is stored in (an incremental image is always qcow2) */
  format?: ImageFormat;
  /** disk images: guest-visible size in bytes */
  virtualSize?: number;
  /** incremental images: the previous iteration's image this one is stored relative to */
  backing?: ChainLink;
  /** disk images stored whole: why this one is not incremental */
  fullReason?: string;
  /** incremental images: how the changes were found (a dirty bitmap, or comparing contents) */
  changesFoundBy?: 'bitmap' | 'comparison';
}

export interface BackupManifest {
  format: 'stoney-backup/1';
  vm: string;
  leaf: string;
  vmType: string;
  pool: string;
  createdAt: string;
  files: ManifestFile[];
}

const MAX_MANIFEST_BYTES = 1024 * 1024;

/**
 * A manifest from a backup directory, checked field by field: backup
 * directories are group-writable, so a manifest is untrusted input to root.
 * Every name must be a plain file name of that leaf; a backing link names a
 * file of an earlier leaf of the same VM.
 */
export function parseManifest(text: string, leaf: string): BackupManifest {
  const o = JSON.parse(text) as Record<string, unknown>;
  if (o['format'] !== 'stoney-backup/1') throw new Error(`unknown manifest format ${JSON.stringify(o['format'])}`);
  if (!Array.isArray(o['files'])) throw new Error('manifest without a file list');
  const files = (o['files'] as unknown[]).map((raw, i) => parseManifestEntry(raw, leaf, i));
  const str = (k: string) => (typeof o[k] === 'string' ? (o[k] as string) : '');
  return { format: 'stoney-backup/1', vm: str('vm'), leaf: str('leaf'), vmType: str('vmType'), pool: str('pool'), createdAt: str('createdAt'), files };
}

/** One file entry of a manifest (or of a kept record in retain), checked the same way. */
export function parseManifestEntry(raw: unknown, leaf: string, i = 0): ManifestFile {
  if (typeof raw !== 'object' || raw === null) throw new Error(`manifest file ${i} is not an object`);
  const f = raw as Record<string, unknown>;
  const { name, size, sha256, sha256PerMiB } = f;
  if (typeof name !== 'string' || !isSafeName(name) || !name.endsWith(`.${leaf}`)) throw new Error(`manifest file ${i}: ${JSON.stringify(name)} is not a file name of backup ${leaf}`);
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw new Error(`manifest file ${name}: bad size`);
  const hex = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
  // Exactly one digest: a second one of another kind would go unchecked.
  if ((sha256 === undefined) === (sha256PerMiB === undefined)) throw new Error(`manifest file ${name}: needs exactly one of sha256PerMiB and sha256`);
  if (sha256 !== undefined && !hex(sha256)) throw new Error(`manifest file ${name}: bad sha256`);
  if (sha256PerMiB !== undefined && !hex(sha256PerMiB)) throw new Error(`manifest file ${name}: bad sha256PerMiB`);
  const out: ManifestFile = { name, size, ...(hex(sha256PerMiB) ? { sha256PerMiB } : { sha256: sha256 as string }) };
  if (f['format'] !== undefined) {
    if (typeof f['format'] !== 'string' || !isImageFormat(f['format'])) throw new Error(`manifest file ${name}: bad format`);
    out.format = f['format'];
  }
  if (f['virtualSize'] !== undefined) {
    if (typeof f['virtualSize'] !== 'number' || !Number.isSafeInteger(f['virtualSize'])) throw new Error(`manifest file ${name}: bad virtualSize`);
    out.virtualSize = f['virtualSize'];
  }
  if (f['backing'] !== undefined) {
    const link = parseChainLink(f['backing']);
    if (link === undefined || !(link.leaf < leaf)) throw new Error(`manifest file ${name}: bad backing ${JSON.stringify(f['backing'])}`);
    out.backing = link;
  }
  if (typeof f['fullReason'] === 'string') out.fullReason = f['fullReason'];
  if (f['changesFoundBy'] === 'bitmap' || f['changesFoundBy'] === 'comparison') out.changesFoundBy = f['changesFoundBy'];
  return out;
}

/** Read a manifest without following a symlink or reading an endless file. */
export async function readManifestFile(file: string, leaf: string): Promise<BackupManifest> {
  const h = await openRegularForRead(file);
  try {
    const st = await h.stat();
    if (st.size > MAX_MANIFEST_BYTES) throw new Error(`${file} is ${st.size} bytes; a manifest is far smaller`);
    return parseManifest(await h.readFile('utf8'), leaf);
  } finally {
    await h.close();
  }
}

/** A leaf directory of the VM: its name, and whether a rotation marked it for removal. */
export interface IterationDir {
  leaf: string;
  dir: string;
  beingRemoved: boolean;
  manifest: BackupManifest | undefined;
}

/**
 * The VM's backup directories named like leaves, with their manifests (a
 * directory without one is no finished backup). Nothing below the backup
 * root may be a symlink.
 */
export async function listIterationDirs(rootDirectory: string, vmBackupDir: string): Promise<IterationDir[]> {
  if (!(await lstat(vmBackupDir).then(() => true, () => false))) return [];
  await assertNoSymlinkBelow(rootDirectory, vmBackupDir, 'directory');
  const out: IterationDir[] = [];
  for (const e of await readdir(vmBackupDir, { withFileTypes: true })) {
    if (!e.isDirectory() || !isLeafName(e.name)) continue;
    const dir = path.join(vmBackupDir, e.name);
    const beingRemoved = await lstat(path.join(dir, ROTATION_MARKER)).then(() => true, () => false);
    const manifestPath = path.join(dir, MANIFEST_NAME);
    const manifest = (await lstat(manifestPath).then(() => true, () => false)) ? await readManifestFile(manifestPath, e.name) : undefined;
    out.push({ leaf: e.name, dir, beingRemoved, manifest });
  }
  return out.sort((a, b) => (a.leaf < b.leaf ? -1 : 1));
}

/**
 * The finished iterations a new backup may build on, with each image checked
 * for presence and size. `includeBeingRemoved`: those a rotation is removing
 * too (a fold must see every link).
 */
export async function finishedIterations(dirs: readonly IterationDir[], opts: { includeBeingRemoved?: boolean } = {}): Promise<Iteration[]> {
  const out: Iteration[] = [];
  for (const d of dirs) {
    if ((d.beingRemoved && !opts.includeBeingRemoved) || d.manifest === undefined) continue;
    const images = [];
    for (const f of d.manifest.files.filter((x) => x.format !== undefined || x.backing !== undefined)) {
      const st = await lstat(path.join(d.dir, f.name)).catch(() => undefined);
      images.push({ name: f.name, size: f.size, ...(f.format !== undefined ? { format: f.format } : {}), ...(f.virtualSize !== undefined ? { virtualSize: f.virtualSize } : {}), ...(f.backing ? { backing: f.backing } : {}), intact: st !== undefined && st.isFile() && st.size === f.size });
    }
    out.push({ leaf: d.leaf, images });
  }
  return out;
}
