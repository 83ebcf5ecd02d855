import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSlapd, ldapAdd, ldapModify, type PrivateSlapd } from '../helpers/slapd.js';
import { connectDirectory } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { PollingChangeFeed } from '../../src/directory/PollingChangeFeed.js';
import type { ChangeEvent } from '../../src/directory/types.js';
import { ldifText, vmEntryLines } from '../helpers/directoryEntries.js';

const VMS = 'ou=virtual machines,ou=virtualization,ou=services,o=stepping-stone,c=ch';

let slapd: PrivateSlapd;
let dir: LdapBackupDirectory;

beforeAll(async () => {
  slapd = await startSlapd();
  dir = await connectDirectory({ url: slapd.url, bindDn: slapd.bindDn, passwordFile: slapd.passwordFile, baseDn: slapd.baseDn });
  // A VM on another node, to check that a node's feed ignores it.
  await ldapAdd(slapd, ldifText(vmEntryLines(`sstVirtualMachine=kvm-101,${VMS}`, { name: 'kvm-101', node: 'node-02.example.com', pool: '0f83f084-8080-413e-b558-b678e504836e', vmType: null })));
});

afterAll(async () => {
  await dir?.close();
  await slapd?.stop();
});

/** Collects events; waitFor resolves when one matching event arrived (or fails after a timeout). */
class Recorder {
  events: ChangeEvent[] = [];
  private waiters: { match: (e: ChangeEvent) => boolean; resolve: () => void }[] = [];
  readonly push = (e: ChangeEvent): void => {
    this.events.push(e);
    this.waiters = this.waiters.filter((w) => {
      if (!w.match(e)) return true;
      w.resolve();
      return false;
    });
  };
  waitFor(match: (e: ChangeEvent) => boolean, timeoutMs = 5_000): Promise<void> {
    if (this.events.some(match)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching event within ${timeoutMs} ms; got ${JSON.stringify(this.events)}`)), timeoutMs);
      this.waiters.push({ match, resolve: () => { clearTimeout(timer); resolve(); } });
    });
  }
  clear(): void {
    this.events = [];
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const leafEvent = (dn: string) => (e: ChangeEvent) => e.kind === 'leaf' && e.dn.toLowerCase() === dn.toLowerCase();

describe('PollingChangeFeed', () => {
  it('reports new, changed and deleted leaves of its node only; resync at start', async () => {
    const existing = `ou=20200101T000000Z,ou=backup,sstVirtualMachine=kvm-001,${VMS}`;
    expect(await dir.createLeaf('kvm-001', '20200101T000000Z')).toBe(true);

    const node = new Recorder();
    const all = new Recorder();
    const nodeFeed = new PollingChangeFeed(dir, { node: 'node-01.example.com' }, { intervalMs: 50 });
    const allFeed = new PollingChangeFeed(dir, {}, { intervalMs: 50 });
    await nodeFeed.start(node.push);
    await allFeed.start(all.push);
    try {
      expect(node.events).toEqual([{ kind: 'resync', dn: '' }]);
      node.clear();

      // new leaf
      const fresh = `ou=20200102T000000Z,ou=backup,sstVirtualMachine=kvm-002,${VMS}`;
      expect(await dir.createLeaf('kvm-002', '20200102T000000Z')).toBe(true);
      await node.waitFor(leafEvent(fresh));

      // changed leaf (mode)
      expect(await dir.casMode(existing, 'initialize', 'initialized')).toBe(true);
      await node.waitFor(leafEvent(existing));

      // changed leaf without a mode change (only the execution time, by someone else)
      node.clear();
      await ldapModify(slapd, `dn: ${existing}\nchangetype: modify\nreplace: sstProvisioningExecutionTime\nsstProvisioningExecutionTime: snapshot: 2\n`);
      await node.waitFor(leafEvent(existing));

      // deleted leaf
      await dir.deleteLeaf(fresh);
      await node.waitFor(leafEvent(fresh));

      // a leaf of a VM on another node: only the control-wide feed sees it
      const foreign = `ou=20200103T000000Z,ou=backup,sstVirtualMachine=kvm-101,${VMS}`;
      node.clear();
      expect(await dir.createLeaf('kvm-101', '20200103T000000Z')).toBe(true);
      await all.waitFor(leafEvent(foreign));
      await sleep(300);
      expect(node.events.filter(leafEvent(foreign))).toEqual([]);

      // nothing changes → no events
      node.clear();
      await sleep(300);
      expect(node.events).toEqual([]);
    } finally {
      await nodeFeed.stop();
      await allFeed.stop();
    }

    // stopped: no more events
    node.clear();
    expect(await dir.casMode(existing, 'initialized', 'snapshot')).toBe(true);
    await sleep(200);
    expect(node.events).toEqual([]);
  });

  it('survives a slapd outage: logs, retries, and reports what changed meanwhile', async () => {
    const rec = new Recorder();
    const warnings: unknown[] = [];
    const logger = {
      warn: (...args: unknown[]) => warnings.push(args),
      info: () => undefined,
      error: () => undefined,
    } as unknown as import('pino').Logger;
    const feed = new PollingChangeFeed(dir, { node: 'node-01.example.com' }, { intervalMs: 50, logger });
    await feed.start(rec.push);
    try {
      const dn = `ou=20200101T000000Z,ou=backup,sstVirtualMachine=kvm-001,${VMS}`;
      await slapd.halt();
      await sleep(300);
      expect(warnings.length).toBeGreaterThan(0);
      await slapd.start();
      rec.clear();
      expect(await dir.casMode(dn, 'snapshot', 'snapshotting')).toBe(true);
      await rec.waitFor(leafEvent(dn));
    } finally {
      await feed.stop();
    }
  });
});
