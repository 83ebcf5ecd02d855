import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupLayout } from '../../src/domain/layout.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';
import { createRestoreWorkDir, isRestoreWorkDir, removeRestoreWorkDir, RESTORE_MARKER } from '../../src/node/restoreWorkDir.js';
import { DECISION_LDIF_MAX_BYTES, readDecisionLdif } from '../../src/node/restoreDecisionLdif.js';

/**
 * The restore's work directory is the leaf's retain directory, shared with
 * the original web UI and group-writable: on a real filesystem, what a
 * restore may create, reuse and remove there, and how the web UI's decision
 * file is read.
 */
const logger = pino({ level: 'silent' });
const VM = 'kvm-000123';
const LEAF = '20261125T010000Z';
const VM_DN = `sstVirtualMachine=${VM},ou=virtual machines,ou=virtualization,ou=services,o=example`;
let dir: string;
let retainRoot: string;
let outside: string;
let layout: BackupLayout;
const opts = () => ({ retainRoot, mode: 0o770, owner: 'root', group: 'root', logger });

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'stoney-workdir-'));
  retainRoot = path.join(dir, 'retain');
  outside = path.join(dir, 'etc');
  await mkdir(retainRoot);
  await mkdir(outside);
  await writeFile(path.join(outside, 'passwd'), 'root:x:0:0\n');
  layout = new BackupLayout({ rootDirectory: path.join(dir, 'backup'), retainDirectory: retainRoot, vmType: 'vm-persistent', pool: 'pool-1', vm: VM, leaf: LEAF });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const inWork = (name: string): string => layout.retainPath(name);
const names = async (): Promise<string[]> => (await readdir(layout.retainDir)).sort();

describe('the restore work directory', () => {
  it('is made fresh and marked; clean-up removes what a restore makes, the web UI\'s decision and a symlink in its place (never the target)', async () => {
    await createRestoreWorkDir(layout, opts());
    expect(await isRestoreWorkDir(layout, retainRoot)).toBe(true);
    // Sticky: the image group may add its decision, but never rename or replace root's files.
    expect(((await lstat(layout.retainDir)).mode & 0o1000).toString(8)).toBe('1000');
    for (const f of [`${VM}.xml.${LEAF}`, `${VM}.ldif.${LEAF}`, `${VM}.state.${LEAF}`, `disk.qcow2.${LEAF}.partial`, 'conflicts.json', 'decided.xml']) await writeFile(inWork(f), 'x');
    await symlink(path.join(outside, 'passwd'), inWork(`${VM}.ldif`));
    expect(await removeRestoreWorkDir(layout, retainRoot, { keepRollback: true, logger })).toEqual([]);
    await expect(lstat(layout.retainDir)).rejects.toThrow(/ENOENT/);
    expect(await readFile(path.join(outside, 'passwd'), 'utf8')).toBe('root:x:0:0\n');
  });

  it('keeps a failed rollback\'s files (and the marker) unless the restore succeeded', async () => {
    await createRestoreWorkDir(layout, opts());
    for (const f of ['live.xml', 'live-disk.qcow2', `${VM}.xml.${LEAF}`]) await writeFile(inWork(f), 'x');
    expect(await removeRestoreWorkDir(layout, retainRoot, { keepRollback: true, logger })).toEqual(['live-disk.qcow2', 'live.xml']);
    expect(await names()).toEqual([RESTORE_MARKER, 'live-disk.qcow2', 'live.xml']);
    // A new restore of the leaf refuses to start on them.
    await expect(createRestoreWorkDir(layout, opts())).rejects.toMatchObject({ code: ReturnCode.restoreDirectoryNotEmpty });
    expect(await names()).toEqual([RESTORE_MARKER, 'live-disk.qcow2', 'live.xml']);
    expect(await removeRestoreWorkDir(layout, retainRoot, { keepRollback: false, logger })).toEqual([]);
    await expect(lstat(layout.retainDir)).rejects.toThrow(/ENOENT/);
  });

  it('reuses its own leftovers of an aborted restore, stale decision included', async () => {
    await createRestoreWorkDir(layout, opts());
    await writeFile(inWork(`${VM}.ldif`), 'stale decision');
    await writeFile(inWork(`${VM}.ldif.${LEAF}`), 'x');
    await createRestoreWorkDir(layout, opts());
    expect(await names()).toEqual([RESTORE_MARKER]);
    await removeRestoreWorkDir(layout, retainRoot, { keepRollback: true, logger });
  });

  it('refuses (64) a directory it did not make that holds anything, and leaves it exactly as it was', async () => {
    await mkdir(layout.retainDir, { recursive: true });
    await writeFile(inWork(`${VM}.xml`), 'a backup\'s retain leftover');
    await expect(createRestoreWorkDir(layout, opts())).rejects.toMatchObject({ code: ReturnCode.restoreDirectoryNotEmpty });
    expect(await removeRestoreWorkDir(layout, retainRoot, { keepRollback: false, logger })).toEqual([]);
    expect(await names()).toEqual([`${VM}.xml`]);
    await rm(layout.retainDir, { recursive: true });
  });

  it('refuses (61) a symlink in place of the directory', async () => {
    await mkdir(path.dirname(layout.retainDir), { recursive: true });
    await symlink(outside, layout.retainDir);
    await expect(createRestoreWorkDir(layout, opts())).rejects.toMatchObject({ code: ReturnCode.symlinkRefused });
    await expect(removeRestoreWorkDir(layout, retainRoot, { keepRollback: false, logger })).rejects.toMatchObject({ code: ReturnCode.symlinkRefused });
    expect(await readdir(outside)).toEqual(['passwd']);
    await rm(layout.retainDir);
  });
});

describe('the web UI\'s decision file', () => {
  const vmEntry = `dn: ${VM_DN}\nobjectClass: sstVirtualizationVirtualMachine\nsstVirtualMachine: ${VM}\nsstDisplayName: edited\n`;
  const disk = `dn: sstDisk=vda,ou=devices,${VM_DN}\nobjectClass: sstVirtualizationVirtualMachineDisk\nsstDisk: vda\n`;
  const devices = `dn: ou=devices,${VM_DN}\nobjectClass: organizationalUnit\nou: devices\n`;

  async function decision(text: string): Promise<unknown> {
    await rm(layout.retainDir, { recursive: true, force: true });
    await createRestoreWorkDir(layout, opts());
    await writeFile(inWork(`${VM}.ldif`), text);
    return readDecisionLdif(layout, VM_DN).catch((err: { code?: number; message: string }) => ({ code: err.code, message: err.message }));
  }

  it('is absent: undefined, the backup decides', async () => {
    await rm(layout.retainDir, { recursive: true, force: true });
    await createRestoreWorkDir(layout, opts());
    expect(await readDecisionLdif(layout, VM_DN)).toBeUndefined();
  });

  it('is read when it holds only the VM\'s subtree', async () => {
    const entries = (await decision(`version: 1\n\n${vmEntry}\n${devices}\n${disk}`)) as { dn: string }[];
    expect(entries.map((e) => e.dn)).toEqual([VM_DN, `ou=devices,${VM_DN}`, `sstDisk=vda,ou=devices,${VM_DN}`]);
  });

  it.each([
    ['an entry of another VM', `${vmEntry}\ndn: sstVirtualMachine=other,ou=virtual machines,ou=virtualization,ou=services,o=example\nsstVirtualMachine: other\n`, /not in the subtree/],
    ['the VM\'s ou=backup', `${vmEntry}\ndn: ou=backup,${VM_DN}\nou: backup\n`, /ou=backup/],
    ['a leaf below ou=backup', `${vmEntry}\ndn: ou=20260101T000000Z,ou=backup,${VM_DN}\nou: 20260101T000000Z\n`, /ou=backup/],
    ['no VM entry', devices, /has no entry/],
    ['an entry twice', `${vmEntry}\n${devices}\n${devices}`, /twice/],
    ['another sstVirtualMachine', vmEntry.replace(`sstVirtualMachine: ${VM}`, 'sstVirtualMachine: other'), /sstVirtualMachine/],
    ['a change record', `dn: ${VM_DN}\nchangetype: delete\n`, /change records/],
    ['more than the size limit', `${vmEntry}description: ${'x'.repeat(DECISION_LDIF_MAX_BYTES)}\n`, /bytes/],
  ])('is refused (65) with %s', async (_what, text, message) => {
    expect(await decision(text)).toEqual({ code: ReturnCode.unsafeDecisionLdif, message: expect.stringMatching(message) as unknown });
  });

  it('is refused (61) as a symlink or a directory, its target unread', async () => {
    await rm(layout.retainDir, { recursive: true, force: true });
    await createRestoreWorkDir(layout, opts());
    await symlink(path.join(outside, 'passwd'), inWork(`${VM}.ldif`));
    await expect(readDecisionLdif(layout, VM_DN)).rejects.toMatchObject({ code: ReturnCode.symlinkRefused });
    await rm(inWork(`${VM}.ldif`));
    await mkdir(inWork(`${VM}.ldif`));
    await expect(readDecisionLdif(layout, VM_DN)).rejects.toMatchObject({ code: ReturnCode.symlinkRefused });
  });
});
