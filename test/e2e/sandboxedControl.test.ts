import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmod, chown, copyFile, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { DateTime } from 'luxon';
import type { ResultPromise } from 'execa';
import { World } from '../helpers/world.js';
import { serviceDirectives } from '../helpers/systemdUnit.js';
import { capMask, spawnSandboxed, statusMask } from '../helpers/sandbox.js';

/**
 * The control daemon plans and drives a scheduled backup inside the
 * confinement of deploy/stoney-backup-control.service, rebuilt without systemd
 * (test/helpers/sandbox.ts): an unprivileged uid of its own (DynamicUser=)
 * without any capability, every mount read-only but its state directory, its
 * env file and password as credentials it owns, and the unit's own ExecStart
 * and Environment= with %d and %S filled in. The env file names another
 * password file and feed state directory: the unit's Environment= must win.
 */
const CLI = path.resolve('bin/stoney-backup.js');
const CONTROL_UNIT = path.resolve('deploy/stoney-backup-control.service');
/** In systemd's range for dynamic users (61184–65519), unlikely to own anything here. */
const DYNAMIC_UID = 61873;
const STARTED = 'control lease acquired: this daemon is active';

let w: World;
let box: string;
let stateDir: string;
let daemon: ResultPromise<{ reject: false; all: true }> | undefined;
let output = '';
let unit: Map<string, string[]>;

beforeAll(async () => {
  await stat('dist/src/cli/main.js').catch(() => {
    throw new Error('dist/ is missing: run `npm run build` (the test command does) before the e2e tests');
  });
  unit = serviceDirectives(await readFile(CONTROL_UNIT, 'utf8'));
  expect(unit.get('DynamicUser')).toEqual(['yes']);
  w = await World.start();
  await w.startNodeDaemon();

  // What systemd would set up: $CREDENTIALS_DIRECTORY (%d) with the copies, the state directory below %S.
  box = await mkdtemp(path.join('/var/tmp', 'stoney-control-sandbox-'));
  await chmod(box, 0o755);
  const credentials = path.join(box, 'credentials');
  const stateRoot = path.join(box, 'lib');
  stateDir = path.join(stateRoot, (unit.get('StateDirectory') ?? [])[0] ?? 'missing');
  await mkdir(credentials);
  await mkdir(stateDir, { recursive: true });
  const env = w.cliEnv();
  await writeFile(path.join(credentials, 'stoney-backup.env'), [
    `STONEY_LDAP_URL=${env['STONEY_LDAP_URL']}`,
    `STONEY_LDAP_BIND_DN=${env['STONEY_LDAP_BIND_DN']}`,
    `STONEY_LDAP_BASE_DN=${env['STONEY_LDAP_BASE_DN']}`,
    'STONEY_LDAP_PASSWORD_FILE=/etc/stoney-backup/no-such-password',
    'STONEY_FEED_STATE_DIR=/var/lib/stoney-backup-read-only',
    'STONEY_TIMEZONE=UTC',
    'STONEY_LOG_LEVEL=info',
    '',
  ].join('\n'));
  await copyFile(env['STONEY_LDAP_PASSWORD_FILE'] as string, path.join(credentials, 'ldap.password'));
  for (const f of ['stoney-backup.env', 'ldap.password']) {
    await chown(path.join(credentials, f), DYNAMIC_UID, DYNAMIC_UID);
    await chmod(path.join(credentials, f), 0o400);
  }
  await chown(credentials, DYNAMIC_UID, DYNAMIC_UID);
  await chmod(credentials, 0o500);
  await chown(stateDir, DYNAMIC_UID, DYNAMIC_UID);
  await chmod(stateDir, 0o700);

  const specifiers = (v: string) => v.replaceAll('%d', credentials).replaceAll('%S', stateRoot);
  const unitEnv = Object.fromEntries((unit.get('Environment') ?? []).map((e) => specifiers(e).split(/=(.*)/s).slice(0, 2) as [string, string]));
  const execStart = specifiers((unit.get('ExecStart') ?? [])[0] ?? '').split(/\s+/);
  expect(execStart.slice(0, 2)).toEqual(['/usr/bin/node', '/opt/stoney-backup/bin/stoney-backup.js']);
  daemon = spawnSandboxed({
    argv: [process.execPath, CLI, ...execStart.slice(2)],
    writable: [stateDir],
    capabilities: unit.get('CapabilityBoundingSet') ?? ['missing'],
    uid: DYNAMIC_UID,
    env: unitEnv,
  });
  daemon.all?.on('data', (d: Buffer) => (output += d.toString()));
}, 180_000);

afterAll(async () => {
  if (daemon?.pid !== undefined && daemon.exitCode === null) {
    daemon.kill('SIGKILL');
    await daemon;
  }
  await w?.cleanup();
  if (box) await rm(box, { recursive: true, force: true });
});

describe('the control daemon inside the control unit\'s sandbox', () => {
  it('runs as its own uid without capabilities and becomes active', async () => {
    await w.waitFor(async () => output.includes(STARTED) || daemon?.exitCode !== null, 60_000).catch(() => undefined);
    expect(output, output.slice(-3000)).toContain(STARTED);
    const status = await readFile(`/proc/${daemon!.pid}/status`, 'utf8');
    expect(status).toMatch(new RegExp(`^Uid:\\s+${DYNAMIC_UID}\\s+${DYNAMIC_UID}\\s+${DYNAMIC_UID}\\s+${DYNAMIC_UID}$`, 'm'));
    expect(statusMask(status, 'CapBnd')).toBe(capMask(unit.get('CapabilityBoundingSet') ?? []));
    expect(statusMask(status, 'CapEff')).toBe(0n);
    expect(status).toMatch(/^NoNewPrivs:\s+1$/m);
  });

  it('plans and drives a scheduled backup to its end, its feed state in the state directory', async () => {
    let at = DateTime.utc().startOf('minute').plus({ minutes: 1 });
    if (at.diffNow().as('seconds') < 15) at = at.plus({ minutes: 1 });
    const vm = await w.addVm('ctl', { running: true, cron: `${at.minute} ${at.hour} * * *` });
    const leaf = at.toFormat("yyyyMMdd'T'HHmmss'Z'");
    await w.waitFor(async () => (await w.directory.listLeaves(vm.name)).some((l) => l.leaf === leaf), at.diffNow().as('milliseconds') + 60_000);
    const done = await w.waitForMode(vm.name, leaf, ['finished'], 180_000);
    expect(done.returnValue, output.slice(-3000)).toBe(0);
    expect((await readdir(stateDir)).length).toBeGreaterThan(0);
    daemon!.kill('SIGTERM');
    expect((await daemon!).exitCode, output.slice(-3000)).toBe(0);
  }, 300_000);
});
