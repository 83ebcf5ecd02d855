/**
 * The directory as two OpenLDAP providers replicating each other
 * (multi-provider / mirror mode, test/helpers/slapdPair.ts): what the
 * daemons' session and change feed do when the provider they use is killed.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import pino from 'pino';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ldapAdd, ldapModify, ldapSearch } from '../helpers/slapd.js';
import { ldifText, vmEntryLines } from '../helpers/directoryEntries.js';
import { startSlapdPair, type SlapdPair } from '../helpers/slapdPair.js';
import { connectDirectory } from '../../src/directory/connect.js';
import { SyncReplChangeFeed } from '../../src/directory/SyncReplChangeFeed.js';
import type { ChangeEvent } from '../../src/directory/types.js';
import { main } from '../../src/cli/runCli.js';

const BASE = 'o=stepping-stone,c=ch';
const VMS = `ou=virtual machines,ou=virtualization,ou=services,${BASE}`;
const NODE = 'node-01.example.com';
const POOL = '0f83f084-8080-413e-b558-b678e504836e';
const vmDn = (vm: string) => `sstVirtualMachine=${vm},${VMS}`;
const leafDn = (vm: string, leaf: string) => `ou=${leaf},ou=backup,${vmDn(vm)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let pair: SlapdPair;
let seq = 0;

beforeAll(async () => {
  pair = await startSlapdPair();
});
afterAll(async () => {
  await pair?.stop();
});
// Every test starts with both providers up (a test may have killed the first).
beforeEach(async () => {
  await pair.providers[0].start();
});

const connection = () => ({
  url: pair.urls[0]!,
  urls: pair.urls,
  bindDn: pair.providers[0].bindDn,
  passwordFile: pair.providers[0].passwordFile,
  baseDn: BASE,
  connectTimeoutMs: 1_000,
});

/** A fresh VM with an ou=backup on `NODE`, written to the first provider and replicated to the second. */
async function addVm(): Promise<string> {
  const vm = `repl-${process.pid}-${++seq}`;
  // A VM entry the original schema accepts (its MUST attributes), and its ou=backup.
  await ldapAdd(pair.providers[0], ldifText(vmEntryLines(vmDn(vm), { name: vm, node: NODE, pool: POOL }), [`dn: ou=backup,${vmDn(vm)}`, 'objectClass: organizationalUnit', 'ou: backup']));
  await pair.waitReplicated(`ou=backup,${vmDn(vm)}`);
  return vm;
}

describe('a replicated directory (two providers, mirror mode)', () => {
  it('a write on either provider appears on the other', async () => {
    const vm = await addVm();
    await ldapModify(pair.providers[1], `dn: ${vmDn(vm)}\nchangetype: modify\nreplace: sstNode\nsstNode: node-09.example.com\n`);
    await pair.waitReplicated(vmDn(vm), '(sstNode=node-09.example.com)');
    expect(await ldapSearch(pair.providers[0], vmDn(vm), '(objectClass=*)', ['sstNode'], 'base')).toMatch(/sstNode: node-09\.example\.com/);
  });

  it('a session given both URLs keeps reading and writing when the first provider is killed, and the first catches up when back', async () => {
    const vm = await addVm();
    const dir = await connectDirectory(connection());
    try {
      expect(await dir.createLeaf(vm, '20260101T000000Z')).toBe(true);
      expect((await dir.getVm(vm))?.node).toBe(NODE);
      await pair.providers[0].kill();
      // Reads, the compare-and-swap and an add: all through the second provider now.
      expect((await dir.getLeaf(leafDn(vm, '20260101T000000Z')))?.mode).toBe('initialize');
      expect(await dir.casMode(leafDn(vm, '20260101T000000Z'), 'initialize', 'snapshot')).toBe(true);
      expect(await dir.createLeaf(vm, '20260101T000100Z')).toBe(true);
      expect((await dir.listLeaves(vm)).map((l) => [l.leaf, l.mode])).toEqual([['20260101T000000Z', 'snapshot'], ['20260101T000100Z', 'initialize']]);
      expect(await ldapSearch(pair.providers[1], leafDn(vm, '20260101T000100Z'), '(objectClass=*)', ['1.1'], 'base')).toContain('dn:');
      // The first provider, back, receives what was written meanwhile.
      await pair.providers[0].start();
      await pair.waitReplicated(leafDn(vm, '20260101T000100Z'));
      await pair.waitReplicated(leafDn(vm, '20260101T000000Z'), '(sstProvisioningMode=snapshot)');
    } finally {
      await dir.close();
    }
  });

  it('the CLI takes both URLs in STONEY_LDAP_URL and answers with the first provider down', async () => {
    const vm = await addVm();
    const config = path.join(pair.providers[0].dir, 'cli.env');
    const p = pair.providers[0];
    await writeFile(config, `STONEY_LDAP_URL="${pair.urls.join(' ')}"\nSTONEY_LDAP_BIND_DN=${p.bindDn}\nSTONEY_LDAP_PASSWORD_FILE=${p.passwordFile}\nSTONEY_LDAP_BASE_DN=${BASE}\n`);
    await p.kill();
    const out: string[] = [];
    const err: string[] = [];
    const code = await main(['list', vm, '--json', '--config', config], { out: (l) => out.push(l), err: (l) => err.push(l) });
    expect({ code, err }).toEqual({ code: 0, err: [] });
    expect(out.join('\n')).toContain(vm);
  });

  it('fails only when no provider answers, with a retryable directory error', async () => {
    const dir = await connectDirectory(connection());
    try {
      await Promise.all(pair.providers.map((p) => p.kill()));
      await expect(dir.listVms()).rejects.toMatchObject({ name: 'DirectoryError', retryable: true });
      await Promise.all(pair.providers.map((p) => p.start()));
      // Back: the same session works again without being reopened.
      expect(Array.isArray(await dir.listVms())).toBe(true);
    } finally {
      await dir.close();
    }
  });

  it('a feed restarted after a failover resumes from its cookie on the provider the cookie came from', async () => {
    const vm = await addVm();
    const dir = await connectDirectory(connection());
    expect(await dir.createLeaf(vm, '20260103T000000Z')).toBe(true);
    await pair.waitReplicated(leafDn(vm, '20260103T000000Z'));
    const stateFile = path.join(pair.providers[1].dir, `feed-${vm}.json`);
    const options = { ...connection(), scope: { node: NODE }, stateFile, reconnectMinMs: 50, reconnectMaxMs: 500, logger: pino({ level: process.env.STONEY_TEST_LOG ?? 'silent' }) };
    const events: ChangeEvent[] = [];
    let feed = new SyncReplChangeFeed(options);
    await feed.start((e) => events.push(e));
    await pair.providers[0].kill();
    const end = Date.now() + 15_000;
    while (events.filter((e) => e.kind === 'resync').length < 2 && Date.now() < end) await sleep(50);
    await feed.stop();
    expect(JSON.parse(await readFile(stateFile, 'utf8')).cookieOrigin).toContain(pair.urls[1]);
    // The first provider is back, but the cookie is the second's: resumed there, nothing to tell but the resync.
    await pair.providers[0].start();
    events.length = 0;
    feed = new SyncReplChangeFeed(options);
    await feed.start((e) => events.push(e));
    try {
      expect(events.map((e) => e.kind)).toEqual(['resync']);
      expect(await dir.casMode(leafDn(vm, '20260103T000000Z'), 'initialize', 'snapshot')).toBe(true);
      const until = Date.now() + 10_000;
      while (!events.some((e) => e.kind === 'leaf') && Date.now() < until) await sleep(50);
      expect(events.filter((e) => e.kind === 'leaf').map((e) => e.dn.toLowerCase())).toEqual([leafDn(vm, '20260103T000000Z').toLowerCase()]);
    } finally {
      await feed.stop();
      await dir.close();
    }
  });

  it('the change feed moves to the second provider when the first is killed: a resync there, then the changes written after', async () => {
    const vm = await addVm();
    const events: ChangeEvent[] = [];
    const dir = await connectDirectory(connection());
    for (const scope of [{ node: NODE }, {}]) {
      const feed = new SyncReplChangeFeed({
        ...connection(),
        scope,
        reconnectMinMs: 50,
        reconnectMaxMs: 500,
        heartbeatIntervalMs: 1_000,
        heartbeatTimeoutMs: 2_000,
        logger: pino({ level: process.env.STONEY_TEST_LOG ?? 'silent' }),
      });
      events.length = 0;
      await feed.start((e) => events.push(e));
      const leaf = scope.node === undefined ? '20260102T000000Z' : '20260102T000100Z';
      try {
        expect(events.map((e) => e.kind)).toEqual(['resync']);
        await pair.providers[0].kill();
        const end = Date.now() + 15_000;
        while (!events.slice(1).some((e) => e.kind === 'resync') && Date.now() < end) await sleep(50);
        expect(events.slice(1).map((e) => e.kind), 'a resync on the second provider').toContain('resync');
        const mark = events.length;
        expect(await dir.createLeaf(vm, leaf)).toBe(true);
        expect(await dir.casMode(leafDn(vm, leaf), 'initialize', 'snapshot')).toBe(true);
        const until = Date.now() + 10_000;
        const delivered = () => events.slice(mark).filter((e) => e.kind === 'leaf' && e.dn.toLowerCase() === leafDn(vm, leaf).toLowerCase());
        while (delivered().length < 2 && Date.now() < until) await sleep(50);
        // The control scope carries the entry: the last event shows the command.
        expect(delivered().length, JSON.stringify(events.slice(mark))).toBeGreaterThanOrEqual(scope.node === undefined ? 2 : 1);
        if (scope.node === undefined) expect(delivered().at(-1)?.attributes?.['sstprovisioningmode']).toEqual(['snapshot']);
      } finally {
        await feed.stop();
        await pair.providers[0].start();
      }
    }
    await dir.close();
  });
});
