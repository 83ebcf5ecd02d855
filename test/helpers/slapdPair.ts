/**
 * Two private slapd on loopback replicating each other: OpenLDAP
 * multi-provider (mirror mode) with the project's schema and cn=config
 * (ldif/config.ldif), each with its own serverID, the syncprov overlay of that
 * config, and an olcSyncrepl consumer of the other. The first is loaded with
 * the sample tree; the second starts empty and is filled by replication, so
 * both hold the same entries with the same entryUUIDs. Writes go to either.
 */
import { randomBytes } from 'node:crypto';
import { ldapSearch, freePort, startSlapd, SAMPLE_BASE_DN, type PrivateSlapd, type StartSlapdOptions } from './slapd.js';

export interface SlapdPair {
  /** providers[0] holds the loaded data first; providers[1] replicates it */
  providers: [PrivateSlapd, PrivateSlapd];
  /** both URLs, first provider first: what STONEY_LDAP_URL would list */
  urls: string[];
  /** Waits until `dn` (with `filter` matching) is on both providers. */
  waitReplicated(dn: string, filter?: string, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

interface Peer {
  serverId: number;
  peerUrl: string;
  bindDn: string;
  password: string;
  baseDn: string;
}

/** cn=config of one provider of the pair: its serverID, the consumer of its peer, multi-provider on. */
export function withReplication(config: string, p: Peer): string {
  const globalEntry = '\ncn: config\n';
  const database = '\nolcDatabase: {1}mdb\n';
  if (!config.includes(globalEntry) || !config.includes(database)) throw new Error('config.ldif changed: cannot find cn=config or the {1}mdb database');
  const syncrepl = [
    `rid=${String(p.serverId === 1 ? 2 : 1).padStart(3, '0')}`,
    `provider=${p.peerUrl}`,
    'bindmethod=simple',
    `binddn="${p.bindDn}"`,
    `credentials=${p.password}`,
    `searchbase="${p.baseDn}"`,
    'type=refreshAndPersist',
    // Retry every second forever: the peer may be down (killed by a test) for a while.
    'retry="1 +"',
    'timeout=3',
    'network-timeout=2',
  ].join(' ');
  return config
    .replace(globalEntry, `${globalEntry}olcServerID: ${p.serverId}\n`)
    .replace(database, `${database}olcSyncrepl: ${syncrepl}\nolcMultiProvider: TRUE\n`);
}

export async function startSlapdPair(opts: Pick<StartSlapdOptions, 'ldifFiles' | 'sampleTree'> = {}): Promise<SlapdPair> {
  const password = randomBytes(12).toString('hex');
  const ports: number[] = [await freePort()];
  while (ports.length < 2) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  const urlOf = (port: number) => `ldap://127.0.0.1:${port}/`;
  const peer = (i: number): Peer => ({
    serverId: i + 1,
    peerUrl: urlOf(ports[1 - i] as number),
    bindDn: `cn=admin,${SAMPLE_BASE_DN}`,
    password,
    baseDn: SAMPLE_BASE_DN,
  });
  const first = await startSlapd({ ...opts, port: ports[0] as number, password, serverId: 1, editConfig: (c) => withReplication(c, peer(0)) });
  let second: PrivateSlapd;
  try {
    second = await startSlapd({ emptyDatabase: true, port: ports[1] as number, password, serverId: 2, editConfig: (c) => withReplication(c, peer(1)) });
  } catch (err) {
    await first.stop();
    throw err;
  }
  const providers: [PrivateSlapd, PrivateSlapd] = [first, second];

  const waitReplicated = async (dn: string, filter = '(objectClass=*)', timeoutMs = 30_000): Promise<void> => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const found = await Promise.all(providers.map(async (s) => s.pid !== undefined && (await ldapSearch(s, dn, filter, ['1.1'], 'base')).trim() !== ''));
      if (found.every(Boolean)) return;
      if (Date.now() > end) throw new Error(`${dn} ${filter} is not on both providers after ${timeoutMs} ms (found: ${found.join(', ')})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const pair: SlapdPair = {
    providers,
    urls: providers.map((s) => s.url),
    waitReplicated,
    async stop() {
      await Promise.all(providers.map((s) => s.stop()));
    },
  };
  try {
    // The second provider is ready once it holds as many entries as the first.
    const count = async (s: PrivateSlapd) => (await ldapSearch(s, SAMPLE_BASE_DN, '(objectClass=*)', ['1.1'])).split('\n').filter((l) => l.startsWith('dn:')).length;
    const end = Date.now() + 30_000;
    while ((await count(second)) !== (await count(first))) {
      if (Date.now() > end) throw new Error('the second provider did not replicate the first one within 30 s');
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    await pair.stop();
    throw err;
  }
  return pair;
}
