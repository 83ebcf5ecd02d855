/**
 * Control daemon high availability (issue 13 item 6) on a real slapd: the
 * lease's compare-and-swap and server times; a holder that loses the
 * directory stops writing before a standby takes over; two real
 * `stoney-backup control` processes — exactly one active, SIGKILL of the
 * active one → the standby takes over within 30 s, SIGTERM → at once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { freePort, startSlapd, type PrivateSlapd } from '../helpers/slapd.js';
import { parsePromText, sampleValue } from '../helpers/promText.js';
import { ControlCli, controlEnv } from '../helpers/controlCli.js';
import { openLdapSession } from '../../src/directory/connect.js';
import type { LdapSession } from '../../src/directory/LdapSession.js';
import { LdapLeaseStore } from '../../src/directory/LdapLeaseStore.js';
import { ControlLease, LeaseLostError, type LeaseStore } from '../../src/control/ControlLease.js';
import { leaseGuardedDirectory } from '../../src/control/leaseGuardedDirectory.js';
import { tokenHolder } from '../../src/control/leaseDecision.js';
import { connectDirectory } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';

let tmp: string;
let slapd: PrivateSlapd;
let session: LdapSession;
let store: LdapLeaseStore;
const logger = pino({ level: process.env.STONEY_TEST_LOG ?? 'silent' });

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'stoney-control-lease-'));
  slapd = await startSlapd();
  session = await openLdapSession({ url: slapd.url, bindDn: slapd.bindDn, passwordFile: slapd.passwordFile });
  store = new LdapLeaseStore(session, slapd.baseDn);
}, 120_000);

afterAll(async () => {
  await session?.close();
  await slapd?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** The lease is free again for the next test. */
async function freeLease(): Promise<void> {
  const v = await store.look('test');
  if (v.holder !== undefined) expect(await store.swap(v.holder, undefined)).toBe(true);
}

describe('the lease store (real slapd)', () => {
  it('creates the lease once; every change is a compare-and-swap of the exact token', async () => {
    expect((await store.look('test')).exists).toBe(false);
    expect(await store.create('a #1')).toBe(true);
    expect(await store.create('b #1')).toBe(false);
    expect(await store.swap('b #1', 'b #2')).toBe(false); // not the holder
    expect(await store.swap(undefined, 'b #2')).toBe(false); // not free
    expect(await store.swap('a #1', 'a #2')).toBe(true); // renewal
    expect(await store.swap('a #1', 'a #3')).toBe(false); // a stale renewal loses
    expect((await store.look('test')).holder).toBe('a #2');
    expect(await store.swap('a #2', undefined)).toBe(true); // release
    expect((await store.look('test')).holder).toBeUndefined();
    expect(await store.swap(undefined, 'b #3')).toBe(true); // claim of a free lease
    expect(await store.swap(undefined, 'c #1')).toBe(false); // … only once
    await freeLease();
  });

  it('reads the server time of the lease write and a later server time from its own clock probe (entryCSN, sub-second)', async () => {
    expect(await store.swap(undefined, 'a #9')).toBe(true);
    const first = await store.look('test');
    await new Promise((r) => setTimeout(r, 1_200));
    const later = await store.look('test');
    expect(first.writtenAt).toBeInstanceOf(Date);
    expect(later.writtenAt?.getTime()).toBe(first.writtenAt?.getTime()); // a probe does not touch the lease
    const age = later.serverNow!.getTime() - later.writtenAt!.getTime();
    expect(age).toBeGreaterThanOrEqual(1_150);
    expect(age).toBeLessThan(5_000);
    // entryCSN has microseconds: the times are not whole seconds every time.
    expect([first.writtenAt, first.serverNow, later.serverNow].some((d) => d!.getMilliseconds() !== 0)).toBe(true);
    await freeLease();
  });
});

/** A store that fails every operation while `broken`: the holder's host lost the directory. */
class CuttableStore implements LeaseStore {
  broken = false;
  constructor(private readonly inner: LeaseStore) {}
  private check(): void {
    if (this.broken) throw new Error('connection refused (fault injected)');
  }
  look(who: string) {
    this.check();
    return this.inner.look(who);
  }
  create(token: string) {
    this.check();
    return this.inner.create(token);
  }
  swap(expected: string | undefined, next: string | undefined) {
    this.check();
    return this.inner.swap(expected, next);
  }
}

describe('two contenders in one process', () => {
  const timing = { durationMs: 3_000, renewMs: 1_000 };
  let directory: LdapBackupDirectory;
  beforeAll(async () => {
    directory = await connectDirectory({ url: slapd.url, bindDn: slapd.bindDn, passwordFile: slapd.passwordFile, baseDn: slapd.baseDn });
  });
  afterAll(async () => directory?.close());

  it('exactly one holds; the holder that loses the directory stops writing before the other takes over', async () => {
    const cut = new CuttableStore(store);
    const a = new ControlLease(cut, timing, logger);
    const b = new ControlLease(store, timing, logger);
    const stopB = new AbortController();
    const termA = await a.acquire(new AbortController().signal);
    expect(termA).toBeDefined();
    let bActiveAt: number | undefined;
    const bTerm = b.acquire(stopB.signal).then((t) => {
      bActiveAt = performance.now();
      return t;
    });
    try {
      // A renews for a while; B stays standby.
      await new Promise((r) => setTimeout(r, 3_500));
      expect(a.held).toBe(true);
      expect(bActiveAt).toBeUndefined();
      expect(tokenHolder((await store.look('test')).holder!)).toBe(a.id);

      const guarded = leaseGuardedDirectory(directory, () => a.assertHeld());
      const t0 = performance.now();
      cut.broken = true;
      const reason = await termA!.lost;
      const aLostAt = performance.now();
      expect(reason).toMatch(/not renewed in time/);
      expect(aLostAt - t0).toBeLessThanOrEqual(timing.durationMs - timing.renewMs + 200);
      expect(a.held).toBe(false);
      await expect(guarded.createLeaf('kvm-001', '20261201T030000Z')).rejects.toBeInstanceOf(LeaseLostError);
      await expect(guarded.casMode('ou=x', 'a', 'b')).rejects.toBeInstanceOf(LeaseLostError);
      expect((await guarded.listLeaves('kvm-001')).some((l) => l.leaf === '20261201T030000Z')).toBe(false); // reads still pass

      const t = await bTerm;
      expect(t).toBeDefined();
      expect(b.held).toBe(true);
      // B took over only after A had stopped, and within lease + one look.
      expect(bActiveAt! - aLostAt).toBeGreaterThan(0);
      expect(bActiveAt! - t0).toBeLessThanOrEqual(timing.durationMs + timing.renewMs + 1_000);
      expect(t!.previousWriteAt).toBeInstanceOf(Date);

      // A's host gets the directory back: A is a standby now and does not take it back.
      cut.broken = false;
      const stopA = new AbortController();
      const again = a.acquire(stopA.signal);
      await new Promise((r) => setTimeout(r, 2_500));
      expect(a.held).toBe(false);
      expect(b.held).toBe(true);
      // B stops (SIGTERM): releases; A takes over at its next look.
      const released = performance.now();
      await b.release();
      const termA2 = await again;
      expect(termA2).toBeDefined();
      expect(performance.now() - released).toBeLessThanOrEqual(timing.renewMs + 500);
      expect(a.held).toBe(true);
      await a.release();
    } finally {
      stopB.abort();
      await bTerm;
      await a.release();
      await b.release();
    }
  }, 30_000);
});

describe('two `stoney-backup control` processes', () => {
  it('exactly one is active; SIGKILL → the standby takes over within 30 s; SIGTERM → a standby takes over at once', async () => {
    await stat(path.resolve('dist/src/cli/main.js')).catch(() => {
      throw new Error('dist/ is missing: run `npm run build` first');
    });
    const ports = new Map<string, number>();
    const env = async (name: string) => {
      const dir = path.join(tmp, name);
      await mkdir(dir, { recursive: true });
      const port = await freePort();
      ports.set(name, port);
      return controlEnv(slapd, dir, { STONEY_METRICS_LISTEN: `127.0.0.1:${port}` });
    };
    /** control_active and directory_connected as the process's /metrics says. */
    const gauges = async (name: string) => {
      const { samples } = parsePromText(await (await fetch(`http://127.0.0.1:${ports.get(name)}/metrics`)).text());
      return { active: sampleValue(samples, 'stoney_backup_control_active'), connected: sampleValue(samples, 'stoney_backup_directory_connected') };
    };
    const first = new ControlCli('first', await env('first'));
    const second = new ControlCli('second', await env('second'));
    const third: ControlCli[] = [];
    try {
      const started = 'control daemon started';
      const standby = 'standby: another control daemon holds the lease';
      // One of them becomes active, the other says it is standby.
      const end = Date.now() + 60_000;
      while (first.count(started) + second.count(started) === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
      const [active, passive] = first.count(started) > 0 ? [first, second] : [second, first];
      expect(await passive.waitFor(standby, 15_000)).toBe(true);
      await new Promise((r) => setTimeout(r, 4_000)); // a few renewals and looks
      expect([active.count(started), passive.count(started)]).toEqual([1, 0]);
      expect(passive.count(standby)).toBe(1); // once per active daemon, not at every renewal
      const holder = (await store.look('test')).holder!;
      expect(holder.split('/')[1]).toBe(String(active.pid));
      // Monitoring tells them apart; the standby's looks count as its directory connection.
      expect(await gauges(active.name)).toEqual({ active: 1, connected: 1 });
      expect(await gauges(passive.name)).toEqual({ active: 0, connected: 1 });

      // SIGKILL: no release; the standby waits for expiry by the server's clock.
      const killedAt = performance.now();
      expect(await active.stop('SIGKILL')).toMatchObject({ signal: 'SIGKILL' });
      expect(await passive.waitFor(started, 30_000)).toBe(true);
      const takeoverMs = performance.now() - killedAt;
      expect(takeoverMs).toBeLessThan(30_000);
      expect(await gauges(passive.name)).toEqual({ active: 1, connected: 1 });
      expect(passive.logLines().find((l) => l['msg'] === 'control lease acquired: this daemon is active')).toMatchObject({ how: 'take-over' });

      // A new standby; SIGTERM of the active one hands over at once.
      const next = new ControlCli('third', await env('third'));
      third.push(next);
      expect(await next.waitFor(standby, 15_000)).toBe(true);
      // A standby stopped: exits 0 at once and leaves the active one's lease alone.
      const spare = new ControlCli('spare', await env('spare'));
      third.push(spare);
      expect(await spare.waitFor(standby, 15_000)).toBe(true);
      const held = (await store.look('test')).holder!;
      const spareAt = performance.now();
      expect(await spare.stop('SIGTERM')).toEqual({ exitCode: 0, signal: undefined });
      expect(performance.now() - spareAt).toBeLessThan(3_000);
      expect(tokenHolder((await store.look('test')).holder!)).toBe(tokenHolder(held));
      const termAt = performance.now();
      const stopped = await passive.stop('SIGTERM');
      expect(stopped).toEqual({ exitCode: 0, signal: undefined });
      expect(passive.count('control lease released')).toBe(1);
      expect(await next.waitFor(started, 15_000)).toBe(true);
      const handoverMs = performance.now() - termAt;
      // stop + release + the standby's next look (3 s) + its start.
      expect(handoverMs).toBeLessThan(8_000);
      expect(next.logLines().find((l) => l['msg'] === 'control lease acquired: this daemon is active')).toMatchObject({ how: 'claim' });
      console.log(`control lease: take-over after SIGKILL ${Math.round(takeoverMs)} ms, after SIGTERM ${Math.round(handoverMs)} ms`);
      expect(await next.stop('SIGTERM')).toEqual({ exitCode: 0, signal: undefined });
    } finally {
      for (const c of [first, second, ...third]) if (!c.exited) await c.stop('SIGKILL');
    }
  }, 120_000);
});
