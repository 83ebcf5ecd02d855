import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';

/**
 * What a sync consumer must remember across restarts, and only together:
 * the cookie says "I have seen everything up to here", the maps say what
 * "everything" was. Deletes may arrive as bare entryUUIDs (syncIdSet), and a
 * present phase lists only what still exists, so without the UUID→DN map
 * the cookie could not be turned back into DNs to act on.
 */
export interface SyncStateData {
  /** Which search this state belongs to; a state of another search is ignored. */
  searchKey: string;
  cookie: Buffer | undefined;
  /** provider and filter of the search the cookie came from (absent in older files: the cookie is not used) */
  cookieOrigin?: string;
  /** entryUUID → DN of every entry in scope */
  uuidToDn: Map<string, string>;
  /** entryUUID of a VM entry → its sstNode (decides which leaves a node daemon hears about) */
  vmNodes: Map<string, string>;
}

interface StateFileJson {
  version: 1;
  searchKey: string;
  savedAt: string;
  /** base64: cookies are opaque bytes (OpenLDAP's happen to be ASCII) */
  cookie: string | null;
  cookieOrigin?: string;
  uuidToDn: Record<string, string>;
  vmNodes: Record<string, string>;
}

/** Thrown by load() when the file exists but cannot be used; the caller starts from scratch. */
export class SyncStateFileError extends Error {
  override name = 'SyncStateFileError';
}

/**
 * The state file of a sync change feed. Writes go to `<file>.partial`, are
 * fsynced and renamed over the file (then the directory is fsynced), so a
 * crash leaves either the old or the new state, never a torn one.
 */
export class SyncStateFile {
  constructor(readonly file: string) {}

  /** The saved state; undefined when there is none yet. Throws SyncStateFileError when it is unreadable. */
  async load(): Promise<SyncStateData | undefined> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new SyncStateFileError(`cannot read the change feed state ${this.file}: ${(err as Error).message}`);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new SyncStateFileError(`the change feed state ${this.file} is not JSON: ${(err as Error).message}`);
    }
    return fromJson(json, this.file);
  }

  async save(state: SyncStateData): Promise<void> {
    const json: StateFileJson = {
      version: 1,
      searchKey: state.searchKey,
      savedAt: new Date().toISOString(),
      cookie: state.cookie && state.cookie.length > 0 ? state.cookie.toString('base64') : null,
      ...(state.cookieOrigin !== undefined ? { cookieOrigin: state.cookieOrigin } : {}),
      uuidToDn: Object.fromEntries(state.uuidToDn),
      vmNodes: Object.fromEntries(state.vmNodes),
    };
    const dir = path.dirname(this.file);
    await mkdir(dir, { recursive: true });
    const partial = `${this.file}.partial`;
    const handle = await open(partial, 'w', 0o600);
    try {
      await handle.writeFile(JSON.stringify(json));
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(partial, this.file);
    // Make the rename itself durable.
    const dirHandle = await open(dir, 'r');
    try {
      await dirHandle.sync();
    } finally {
      await dirHandle.close();
    }
  }

  /** Removes the file (and a leftover .partial). */
  async remove(): Promise<void> {
    await rm(this.file, { force: true });
    await rm(`${this.file}.partial`, { force: true });
  }
}

function isStringRecord(v: unknown): v is Record<string, string> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
}

function fromJson(json: unknown, file: string): SyncStateData {
  const bad = (why: string) => new SyncStateFileError(`the change feed state ${file} is unusable: ${why}`);
  if (typeof json !== 'object' || json === null) throw bad('not an object');
  const o = json as Partial<Record<keyof StateFileJson, unknown>>;
  if (o.version !== 1) throw bad(`unknown version ${JSON.stringify(o.version)}`);
  if (typeof o.searchKey !== 'string') throw bad('no searchKey');
  if (o.cookie !== null && typeof o.cookie !== 'string') throw bad('cookie is neither a string nor null');
  if (!isStringRecord(o.uuidToDn)) throw bad('uuidToDn is not a map of strings');
  if (!isStringRecord(o.vmNodes)) throw bad('vmNodes is not a map of strings');
  if (o.cookieOrigin !== undefined && typeof o.cookieOrigin !== 'string') throw bad('cookieOrigin is not a string');
  const cookie = typeof o.cookie === 'string' && o.cookie !== '' ? Buffer.from(o.cookie, 'base64') : undefined;
  return {
    searchKey: o.searchKey,
    cookie: cookie && cookie.length > 0 ? cookie : undefined,
    ...(typeof o.cookieOrigin === 'string' ? { cookieOrigin: o.cookieOrigin } : {}),
    uuidToDn: new Map(Object.entries(o.uuidToDn)),
    vmNodes: new Map(Object.entries(o.vmNodes)),
  };
}
