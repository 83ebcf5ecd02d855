import { afterAll, beforeAll } from 'vitest';
import { startSlapd, type PrivateSlapd, type StartSlapdOptions } from './slapd.js';
import { connectDirectory } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';

export interface SlapdWithDirectory {
  slapd: PrivateSlapd;
  /** the project's directory client, bound as the rootdn */
  dir: LdapBackupDirectory;
}

/**
 * The usual integration file (or describe block): one private slapd and a
 * directory client for all its tests, both gone afterwards. `set` receives
 * them once they run, e.g. `useSlapdWithDirectory((s) => ({ slapd, dir } = s));`.
 */
export function useSlapdWithDirectory(set: (s: SlapdWithDirectory) => void, opts: StartSlapdOptions = {}): void {
  let slapd: PrivateSlapd | undefined;
  let dir: LdapBackupDirectory | undefined;
  beforeAll(async () => {
    slapd = await startSlapd(opts);
    dir = await connectDirectory({ url: slapd.url, bindDn: slapd.bindDn, passwordFile: slapd.passwordFile, baseDn: slapd.baseDn });
    set({ slapd, dir });
  });
  afterAll(async () => {
    await dir?.close();
    await slapd?.stop();
  });
}
