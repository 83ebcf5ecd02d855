/**
 * A restore driven as the original stoney cloud drives it: its web UI and
 * its control instance write the leaf's modes themselves (replace, state 0,
 * no `ou=restore` request, no stoney-backup control process) and exchange
 * the user's decision through files in the leaf's retain directory:
 * `<retain>/vm-persistent/<storage-pool>/<vm>/<leaf>/<vm>.ldif.<leaf>` is
 * read after unretainedSmallFiles ("Error finding LDIF file" otherwise) and
 * copied to `<vm>.ldif` when the user starts the restore.
 */
import { describe, expect, it } from 'vitest';
import { lstat, readFile, readdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { STORAGE_POOL, vmDn, type World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { ldapModify, ldapSearch } from '../helpers/slapd.js';
import { guestReadMatches, guestWrite, virsh } from '../helpers/libvirt.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';
import type { LeafEntry } from '../../src/directory/types.js';

const A = 0xab;
const B = 0xcd;

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

/** What the web UI and the original control instance write: the mode replaced, state 0. */
async function writeMode(leaf: LeafEntry, mode: string): Promise<void> {
  await ldapModify(w.slapd, `dn: ${leaf.dn}\nchangetype: modify\nreplace: sstProvisioningMode\nsstProvisioningMode: ${mode}\n-\nreplace: sstProvisioningState\nsstProvisioningState: 0\n`);
}

async function step(vm: string, leaf: LeafEntry, command: string, done: string): Promise<LeafEntry> {
  await writeMode(leaf, command);
  return w.waitForMode(vm, leaf.leaf, [done]);
}

/** The directory the web UI computes: retain / vm-persistent / first storage pool / vm / leaf. */
const webUiDir = (vm: string, leaf: string): string => path.join(w.retainRoot, 'vm-persistent', STORAGE_POOL, vm, leaf);

const present = (p: string): Promise<boolean> => lstat(p).then(() => true, () => false);

/** The VM's directory subtree without the leaves' progress (mode, state, return value), for before/after comparisons. */
async function subtree(vm: string): Promise<string> {
  const out = await ldapSearch(w.slapd, vmDn(vm), '(objectClass=*)', ['*']);
  return out.split('\n\n').filter((e) => !/^dn: ou=restore,/m.test(e)).map((e) => e.split('\n').filter((l) => !/^sstProvisioning(State|Mode|ReturnValue):/.test(l)).sort().join('\n')).sort().join('\n\n');
}

async function files(...dirs: string[]): Promise<string> {
  return (await execa('find', [...dirs, '-printf', '%p %y %s %m %T@\n'])).stdout.split('\n').sort().join('\n');
}

/** A running VM with a backup (pattern A) and, after it, pattern B written at 2M. */
async function backedUp(short: string, leaf: string) {
  const vm = await w.addVm(short, { running: true, pattern: A });
  await w.backupOk(vm.name, leaf);
  await guestWrite(vm.name, 'vda', B, '2M', '1M');
  return { vm, leaf: await w.leaf(vm.name, leaf) };
}

/** The web UI's wait: unretainedSmallFiles with 0, and the backup's LDIF where it looks for it. */
async function smallFilesUnretained(vm: string, leaf: LeafEntry): Promise<string> {
  const l = await step(vm, leaf, 'unretainSmallFiles', 'unretainedSmallFiles');
  expect(l.returnValue).toBe(0);
  const dir = webUiDir(vm, leaf.leaf);
  for (const f of [`${vm}.ldif.${leaf.leaf}`, `${vm}.xml.${leaf.leaf}`]) expect((await lstat(path.join(dir, f))).isFile()).toBe(true);
  return dir;
}

describe('a restore started and decided by the original web UI', () => {
  it('restores the backup\'s data with the user\'s LDIF, and the retain directory goes with finished', async () => {
    const { vm, leaf } = await backedUp('wui', '20261125T010000Z');
    expect(await w.directory.getRestoreRequest(leaf.dn)).toBeUndefined();
    const dir = await smallFilesUnretained(vm.name, leaf);

    // The user's "start": the backup's LDIF copied to <vm>.ldif, here with one attribute edited.
    const original = await readFile(path.join(dir, `${vm.name}.ldif.${leaf.leaf}`), 'utf8');
    const edited = original.replace(`sstDisplayName: ${vm.name}\n`, 'sstDisplayName: chosen in the web UI\n');
    expect(edited).not.toBe(original);
    await writeFile(path.join(dir, `${vm.name}.ldif`), edited);
    expect((await step(vm.name, leaf, 'unretainLargeFiles', 'unretainedLargeFiles')).returnValue).toBe(0);
    expect((await step(vm.name, leaf, 'restore', 'restored')).returnValue).toBe(0);
    await writeMode(leaf, 'finished');

    expect(await virsh.domStateReason(vm.name)).toBe('running (restored)');
    expect(await guestReadMatches(vm.name, 'vda', A, '0', '1M')).toBe(true);
    expect(await guestReadMatches(vm.name, 'vda', 0, '2M', '1M')).toBe(true);
    expect(await ldapSearch(w.slapd, vmDn(vm.name), '(objectClass=*)', ['sstDisplayName'], 'base')).toContain('sstDisplayName: chosen in the web UI');
    await w.waitFor(async () => !(await present(dir)) && (await w.directory.getRestoreRequest(leaf.dn)) === undefined);
    expect(await readdir(path.dirname(dir))).toEqual([]);
  });

  it('without a decision file takes the backup whole (the project\'s "prefer backup")', async () => {
    const { vm, leaf } = await backedUp('wuib', '20261125T010100Z');
    await ldapModify(w.slapd, `dn: ${vmDn(vm.name)}\nchangetype: modify\nreplace: sstDisplayName\nsstDisplayName: changed after the backup\n`);
    await smallFilesUnretained(vm.name, leaf);
    expect((await step(vm.name, leaf, 'unretainLargeFiles', 'unretainedLargeFiles')).returnValue).toBe(0);
    expect((await step(vm.name, leaf, 'restore', 'restored')).returnValue).toBe(0);
    await writeMode(leaf, 'finished');
    expect(await guestReadMatches(vm.name, 'vda', 0, '2M', '1M')).toBe(true);
    expect(await ldapSearch(w.slapd, vmDn(vm.name), '(objectClass=*)', ['sstDisplayName'], 'base')).toContain(`sstDisplayName: ${vm.name}`);
    await w.waitFor(async () => !(await present(webUiDir(vm.name, leaf.leaf))));
  });
});

describe('a decision file with a memory of neither the backup nor the live VM', () => {
  it('is refused with 33 before the large files are copied (no domain can match it), nothing live changed', async () => {
    const { vm, leaf } = await backedUp('wuim', '20261125T010150Z');
    const before = { tree: await subtree(vm.name), definition: await virsh.dumpXml(vm.name, { inactive: true }) };
    const dir = await smallFilesUnretained(vm.name, leaf);
    const original = await readFile(path.join(dir, `${vm.name}.ldif.${leaf.leaf}`), 'utf8');
    const edited = original.replace(`sstMemory: ${32 * 1024 * 1024}\n`, `sstMemory: ${64 * 1024 * 1024}\n`);
    expect(edited).not.toBe(original);
    await writeFile(path.join(dir, `${vm.name}.ldif`), edited);
    expect((await step(vm.name, leaf, 'unretainLargeFiles', 'unretainedLargeFiles')).returnValue).toBe(ReturnCode.backendXmlInconsistency);
    expect(await readdir(dir)).not.toContain(`${path.basename(vm.disks[0]!.path)}.${leaf.leaf}`);
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
    expect({ tree: await subtree(vm.name), definition: await virsh.dumpXml(vm.name, { inactive: true }) }).toEqual(before);
    await writeMode(leaf, 'finished');
    await w.waitFor(async () => !(await present(dir)));
  });
});

describe('the web UI\'s cancel (finished written at unretainedSmallFiles)', () => {
  it('removes the retain directory and the request; nothing live changed', async () => {
    const { vm, leaf } = await backedUp('wuic', '20261125T010200Z');
    const before = { tree: await subtree(vm.name), files: await files(w.imageRoot, w.backupRoot), definition: await virsh.dumpXml(vm.name, { inactive: true }) };
    const dir = await smallFilesUnretained(vm.name, leaf);
    await writeFile(path.join(dir, `${vm.name}.ldif`), await readFile(path.join(dir, `${vm.name}.ldif.${leaf.leaf}`)));
    await writeMode(leaf, 'finished');
    await w.waitFor(async () => !(await present(dir)) && (await w.directory.getRestoreRequest(leaf.dn)) === undefined);
    expect({ tree: await subtree(vm.name), files: await files(w.imageRoot, w.backupRoot), definition: await virsh.dumpXml(vm.name, { inactive: true }) }).toEqual(before);
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
  });
});

describe('a hostile decision file', () => {
  const victimDn = (): string => vmDn(w.name('victim'));
  it.each([
    ['an entry outside the VM\'s subtree', 'outside', ReturnCode.unsafeDecisionLdif],
    ['an entry in the VM\'s ou=backup', 'backup', ReturnCode.unsafeDecisionLdif],
    ['a symbolic link instead of a file', 'symlink', ReturnCode.symlinkRefused],
  ] as const)('with %s is refused with its code; the VM and its directory stay as they were', async (_what, kind, code) => {
    const { vm, leaf } = await backedUp(`wuh${kind[0]}`, `20261125T0103${String(['outside', 'backup', 'symlink'].indexOf(kind)).padStart(2, '0')}Z`);
    const dir = await smallFilesUnretained(vm.name, leaf);
    const before = { tree: await subtree(vm.name), files: await files(w.imageRoot, w.backupRoot), definition: await virsh.dumpXml(vm.name, { inactive: true }) };
    const decision = path.join(dir, `${vm.name}.ldif`);
    const backupLdif = await readFile(path.join(dir, `${vm.name}.ldif.${leaf.leaf}`), 'utf8');
    if (kind === 'outside') await writeFile(decision, `${backupLdif}\ndn: ${victimDn()}\nobjectClass: top\nobjectClass: sstVirtualizationVirtualMachine\nsstVirtualMachine: ${w.name('victim')}\n`);
    if (kind === 'backup') await writeFile(decision, `${backupLdif}\ndn: ou=backup,${vmDn(vm.name)}\nobjectClass: top\nobjectClass: organizationalUnit\nou: backup\n`);
    if (kind === 'symlink') await symlink('/etc/passwd', decision);

    const refused = await step(vm.name, leaf, 'unretainLargeFiles', 'unretainedLargeFiles');
    expect(refused.returnValue).toBe(code);
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
    expect({ tree: await subtree(vm.name), files: await files(w.imageRoot, w.backupRoot), definition: await virsh.dumpXml(vm.name, { inactive: true }) }).toEqual(before);
    expect(await ldapSearch(w.slapd, victimDn(), '(objectClass=*)', ['dn'], 'base').catch(() => '')).toBe('');

    await writeMode(leaf, 'finished');
    await w.waitFor(async () => !(await present(dir)));
    expect((await lstat('/etc/passwd')).isFile()).toBe(true);
  });

  it('swapped in after the large files were unretained is refused by the restore itself before anything live changes', async () => {
    const { vm, leaf } = await backedUp('wuhw', '20261125T010400Z');
    const dir = await smallFilesUnretained(vm.name, leaf);
    const decision = path.join(dir, `${vm.name}.ldif`);
    const backupLdif = await readFile(path.join(dir, `${vm.name}.ldif.${leaf.leaf}`), 'utf8');
    await writeFile(decision, backupLdif);
    expect((await step(vm.name, leaf, 'unretainLargeFiles', 'unretainedLargeFiles')).returnValue).toBe(0);
    const before = { tree: await subtree(vm.name), files: await files(w.imageRoot, w.backupRoot), definition: await virsh.dumpXml(vm.name, { inactive: true }) };
    await writeFile(decision, `${backupLdif}\ndn: ${victimDn()}\nobjectClass: top\nobjectClass: sstVirtualizationVirtualMachine\nsstVirtualMachine: ${w.name('victim')}\n`);
    expect((await step(vm.name, leaf, 'restore', 'restored')).returnValue).toBe(ReturnCode.unsafeDecisionLdif);
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
    expect({ tree: await subtree(vm.name), files: await files(w.imageRoot, w.backupRoot), definition: await virsh.dumpXml(vm.name, { inactive: true }) }).toEqual(before);
    await writeMode(leaf, 'finished');
    await w.waitFor(async () => !(await present(dir)));
  });
});

describe('the leaf\'s retain directory holding files this program did not make', () => {
  it('stops unretainSmallFiles with 64 and touches none of them', async () => {
    const { vm, leaf } = await backedUp('wuif', '20261125T010500Z');
    const dir = webUiDir(vm.name, leaf.leaf);
    await execa('mkdir', ['-p', dir]);
    // E.g. what a backup's retain step could not remove, or an operator's copy.
    await writeFile(path.join(dir, `${vm.name}.ldif`), 'dn: cn=not a restore\n');
    const beforeDir = await files(dir);
    const l = await step(vm.name, leaf, 'unretainSmallFiles', 'unretainedSmallFiles');
    expect(l.returnValue).toBe(ReturnCode.restoreDirectoryNotEmpty);
    expect(await files(dir)).toBe(beforeDir);
    await writeMode(leaf, 'finished');
    // Clean-up leaves a directory it did not make alone.
    await new Promise((r) => setTimeout(r, 1500));
    expect(await files(dir)).toBe(beforeDir);
  });
});
