/**
 * The manual-restore runbook (docs/restore-runbook.md), executed: a backup is
 * made by the end-to-end machinery, the guest writes after it, the definition
 * and the directory change; then every command block of the runbook runs in
 * document order, each in its own `bash` after `set -euo pipefail` and the
 * runbook's own setup blocks filled with this world's values (what an operator
 * has in the shell after pasting them). The world must show the backup again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readdir, readFile, stat } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { World, STORAGE_POOL, vmDn } from '../helpers/world.js';
import { backingFileOf, guestReadMatches, guestWrite, imageMatches, virsh } from '../helpers/libvirt.js';
import { ldapModify, ldapSearch, PROJECT_ROOT } from '../helpers/slapd.js';
import { buildPrelude, describeFailure, readRunbook, runBlock, type BlockRun, type RunbookBlock } from '../helpers/runbook.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { parseDomainDisks } from '../../src/hypervisor/domainXml.js';
import { BackupLayout } from '../../src/domain/layout.js';
import { run } from '../../src/hypervisor/exec.js';

const A = 0xab;
const B = 0xcd;
const C = 0x3c;
const RUNBOOK = path.join(PROJECT_ROOT, 'docs', 'restore-runbook.md');
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };
const vmStorageGid = Number(execFileSync('getent', ['group', 'vm-storage']).toString().split(':')[2]);

let w: World;
let blocks: RunbookBlock[];

beforeAll(async () => {
  blocks = await readRunbook(RUNBOOK);
  // Fails — never skips — when slapd or libvirtd cannot start.
  w = await World.start();
});
afterAll(async () => {
  await w?.cleanup();
});

/** LDIF → { dn: sorted "attr: value" lines }, folding, comments and version line ignored. */
function ldifEntries(text: string): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const para of text.replace(/\r?\n /g, '').split(/\n\s*\n/)) {
    const lines = para.split('\n').filter((l) => l !== '' && !l.startsWith('#') && !l.startsWith('version:'));
    if (lines.length === 0) continue;
    out[(lines[0] ?? '').replace(/^dn: /, '').toLowerCase()] = lines.slice(1).sort();
  }
  return out;
}

async function filesBelow(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => !e.isDirectory()).map((e) => path.join(e.parentPath, e.name));
}

function utcStamp(d = new Date()): string {
  return d.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

interface Scenario {
  vm: string;
  image: string;
  leaf: string;
  layout: BackupLayout;
  /** the VM's subtree (without ou=backup) as changed after the backup, i.e. right before the runbook */
  liveLdifBefore: string;
  /** the ou=backup subtree right before the runbook */
  backupSubtreeBefore: string;
}

/**
 * A VM with pattern A, backed up; then B written (through the guest when it
 * runs, into the image when it is off), a description added to the
 * persistent definition, and the directory changed (an attribute added, one
 * removed, an entry added) — all after the backup, so the restore must undo them.
 */
async function backedUpAndChanged(short: string, leaf: string, running = true, opts: { incrementalOf?: string } = {}): Promise<Scenario> {
  const tiny = await w.addVm(short, { running, pattern: A, ...(opts.incrementalOf ? { backupAttributes: ['sstBackupNumberOfIterations: 2'] } : {}) });
  const vm = tiny.name;
  await w.startNodeDaemon();
  if (opts.incrementalOf) {
    // An earlier backup, then C: the backup under test stores C only, relative to the earlier one.
    const [first] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm))!], leaf: opts.incrementalOf, policy, logger: w.logger });
    expect({ mode: first?.mode, rv: first?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    await guestWrite(vm, 'vda', C, '4M', '1M');
  }
  const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm))!], leaf, policy, logger: w.logger });
  expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
  await w.stopNodeDaemons(); // the runbook is for when the daemons cannot be used

  if (running) {
    await guestWrite(vm, 'vda', B, '2M', '1M');
    expect(await guestReadMatches(vm, 'vda', B, '2M', '1M')).toBe(true);
  } else {
    await run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${B} 2M 1M`, tiny.disks[0]!.path]);
    expect(await imageMatches(tiny.disks[0]!.path, B, '2M', '1M')).toBe(true);
  }
  await run('virsh', ['-c', w.libvirtUri, 'desc', vm, '--config', '--new-desc', 'changed after the backup']);
  await ldapModify(
    w.slapd,
    `dn: ${vmDn(vm)}
changetype: modify
add: description
description: changed after the backup

dn: sstDisk=vda,ou=devices,${vmDn(vm)}
changetype: modify
delete: sstDriverType

dn: sstDisk=vdb,ou=devices,${vmDn(vm)}
changetype: add
objectClass: top
objectClass: sstVirtualizationVirtualMachineDisk
sstDisk: vdb
sstDevice: disk
sstType: file
sstSourceFile: ${w.imageDir}/added-after-the-backup-vdb.qcow2
sstTargetBus: virtio
`,
  );
  const layout = new BackupLayout({ rootDirectory: w.backupRoot, retainDirectory: w.retainRoot, vmType: 'vm-persistent', pool: STORAGE_POOL, vm, leaf });
  return {
    vm,
    image: tiny.disks[0]!.path,
    leaf,
    layout,
    liveLdifBefore: await w.directory.exportVmLdif(vm),
    backupSubtreeBefore: await ldapSearch(w.slapd, `ou=backup,${vmDn(vm)}`),
  };
}

/** Values for the runbook's editable variables in this world. */
function variablesFor(s: Scenario, restoredate: string): Record<string, string> {
  return {
    machinename: s.vm,
    vmtype: 'vm-persistent',
    vmpool: STORAGE_POOL, // the runbook's `vmpool` is the storage-pool directory of the disks
    backupdate: s.leaf,
    backuproot: w.backupRoot,
    retainroot: w.retainRoot,
    imagedir: w.imageDir,
    imageowner: 'root',
    imagegroup: 'vm-storage',
    imagemode: '0660',
    ldapurl: w.slapd.url,
    ldapbase: w.slapd.baseDn,
    ldapbinddn: w.slapd.bindDn,
    ldappwfile: w.slapd.passwordFile,
    libvirturi: w.libvirtUri,
    shutdowntimeout: '3',
    restorestate: 'yes',
    forcestart: 'no',
    restoredate,
  };
}

/** Run the given blocks in order; the first one that does not exit 0 fails the test with the block and its output. */
async function runBlocks(prelude: string, selected: RunbookBlock[]): Promise<BlockRun[]> {
  const runs: BlockRun[] = [];
  for (const block of selected) {
    const r = await runBlock(prelude, block);
    runs.push(r);
    if (r.exitCode !== 0) expect.fail(describeFailure(r));
    if (process.env.STONEY_TEST_RUNBOOK_OUTPUT) console.log(`--- #${block.index} ${block.id} (${r.ms} ms)\n${r.output}`);
  }
  return runs;
}

function blockById(id: string): RunbookBlock {
  const b = blocks.find((x) => x.id === id);
  if (!b) throw new Error(`the runbook has no block id=${id}`);
  return b;
}

async function expectRetainClean(s: Scenario): Promise<void> {
  expect(await filesBelow(w.retainRoot)).toEqual([]);
  await expect(stat(path.join(w.retainRoot, 'vm-persistent', STORAGE_POOL, s.vm))).rejects.toThrow(/ENOENT/);
}

describe('the manual-restore runbook', () => {
  it('is well-formed: marked blocks, setup first, a variables block the test fills completely', () => {
    const kinds = blocks.map((b) => b.kind);
    expect(kinds.slice(0, 2)).toEqual(['setup', 'setup']);
    expect(kinds.slice(2)).not.toContain('setup');
    expect(blocks.filter((b) => b.kind === 'changes').length).toBeGreaterThanOrEqual(7);
    // fills every editable variable or throws
    buildPrelude(blocks, variablesFor({ vm: 'x', leaf: '20261122T030000Z' } as Scenario, '20261123T000000Z'));
  });

  it('restores a running VM to the backup: memory state, disk A without B, definition and directory as backed up', async () => {
    const s = await backedUpAndChanged('rb1', '20261122T040000Z');
    const prelude = buildPrelude(blocks, variablesFor(s, utcStamp()));

    const toRun = blocks.filter((b) => b.kind === 'inspect' || b.kind === 'changes');
    const skipped = blocks.filter((b) => b.kind === 'manual');
    const runs = await runBlocks(prelude, toRun);
    const ranIds = runs.map((r) => r.block.id);
    console.log(
      `runbook: ${runs.length} blocks executed (${runs.filter((r) => r.block.kind === 'inspect').length} inspect, ` +
        `${runs.filter((r) => r.block.kind === 'changes').length} changes), ${blocks.filter((b) => b.kind === 'setup').length} setup blocks as prelude, ` +
        `${skipped.length} manual skipped here [${skipped.map((b) => b.id).join(', ')}]: ${ranIds.join(' → ')}`,
    );
    for (const b of blocks.filter((x) => x.kind === 'changes')) expect(ranIds).toContain(b.id);
    expect(runs.length).toBe(blocks.length - blocks.filter((b) => b.kind === 'setup').length - skipped.length);
    // The manual check recomputed each file's sha256PerMiB with coreutils and found it equal to the manifest's.
    const verified = runs.find((r) => r.block.id === 'verify-backup')?.output ?? '';
    expect(verified.match(/^OK {2}sha256PerMiB {2}\S+$/gm)?.length).toBeGreaterThanOrEqual(4);
    expect(verified).not.toMatch(/CORRUPT|MISSING/);

    // The VM runs from the saved state, persistent, and the guest sees the backup: A, not B.
    expect(await virsh.domState(s.vm)).toBe('running');
    expect(await virsh.isPersistent(s.vm)).toBe(true);
    expect(await guestReadMatches(s.vm, 'vda', A, '0', '1M')).toBe(true);
    expect(await guestReadMatches(s.vm, 'vda', 0, '2M', '1M')).toBe(true);

    // No backing file, in the image header nor in the live chain.
    expect(await backingFileOf(s.image)).toBeUndefined();
    expect(parseDomainDisks(await virsh.dumpXml(s.vm)).map((d) => [d.target, d.source, d.backingChain])).toEqual([['vda', s.image, []]]);
    const st = await stat(s.image);
    expect({ mode: st.mode & 0o777, uid: st.uid, gid: st.gid }).toEqual({ mode: 0o660, uid: 0, gid: vmStorageGid });

    // The persistent definition is the backed-up one (the later description is gone).
    expect(await virsh.dumpXml(s.vm, { inactive: true })).not.toContain('<description>');

    // The directory: the VM's entries exactly as backed up; ou=backup untouched.
    const backedUp = await readFile(s.layout.backupPath(`${s.vm}.ldif`), 'utf8');
    expect(ldifEntries(await w.directory.exportVmLdif(s.vm))).toEqual(ldifEntries(backedUp));
    expect(ldifEntries(s.liveLdifBefore)).not.toEqual(ldifEntries(backedUp)); // the test did change it
    expect(await ldapSearch(w.slapd, `ou=backup,${vmDn(s.vm)}`)).toBe(s.backupSubtreeBefore);
    expect((await w.leaf(s.vm, s.leaf)).mode).toBe('finished');

    await expectRetainClean(s);
  });

  it('restores an incremental backup: the image is converted with its chain, the guest sees A and C without B', async () => {
    const s = await backedUpAndChanged('rb4', '20261122T050000Z', true, { incrementalOf: '20261122T045000Z' });
    const manifest = JSON.parse(await readFile(s.layout.manifestPath, 'utf8')) as { files: { name: string; backing?: { leaf: string } }[] };
    expect(manifest.files.find((f) => f.name === path.basename(s.layout.backupPath(path.basename(s.image))))?.backing?.leaf).toBe('20261122T045000Z');
    const prelude = buildPrelude(blocks, variablesFor(s, utcStamp()));
    const runs = await runBlocks(prelude, blocks.filter((b) => b.kind === 'inspect' || b.kind === 'changes'));
    console.log(`runbook, incremental backup: ${runs.length} blocks executed`);
    expect(await virsh.domState(s.vm)).toBe('running');
    expect(await guestReadMatches(s.vm, 'vda', A, '0', '1M')).toBe(true);
    expect(await guestReadMatches(s.vm, 'vda', C, '4M', '1M')).toBe(true);
    expect(await guestReadMatches(s.vm, 'vda', 0, '2M', '1M')).toBe(true);
    expect(await backingFileOf(s.image)).toBeUndefined();
    await expectRetainClean(s);
  });

  it('restores the backup of a shut-off VM (placeholder state file): defined, left off, disk A without B', async () => {
    const s = await backedUpAndChanged('rb3', '20261122T043000Z', false);
    const prelude = buildPrelude(blocks, variablesFor(s, utcStamp()));
    const runs = await runBlocks(prelude, blocks.filter((b) => b.kind === 'inspect' || b.kind === 'changes'));
    console.log(`runbook, shut-off VM: ${runs.length} blocks executed`);
    expect(await virsh.domState(s.vm)).toBe('shut off');
    expect(await virsh.isPersistent(s.vm)).toBe(true);
    expect(await imageMatches(s.image, A, '0', '1M')).toBe(true);
    expect(await imageMatches(s.image, 0, '2M', '1M')).toBe(true);
    expect(await backingFileOf(s.image)).toBeUndefined();
    expect(await virsh.dumpXml(s.vm, { inactive: true })).not.toContain('<description>');
    const backedUp = await readFile(s.layout.backupPath(`${s.vm}.ldif`), 'utf8');
    expect(ldifEntries(await w.directory.exportVmLdif(s.vm))).toEqual(ldifEntries(backedUp));
    await expectRetainClean(s);
  });

  it('rolls back with its manual rollback block: live disks (A and B), definition and directory as before the restore', async () => {
    const s = await backedUpAndChanged('rb2', '20261122T041500Z');
    const prelude = buildPrelude(blocks, variablesFor(s, utcStamp()));

    const ordered = blocks.filter((b) => b.kind === 'inspect' || b.kind === 'changes');
    const upToRestore = ordered.slice(0, ordered.findIndex((b) => b.id === 'restore') + 1);
    const runs = await runBlocks(prelude, [...upToRestore, blockById('verify'), blockById('rollback'), blockById('cleanup')]);
    console.log(`runbook rollback path: ${runs.length} blocks executed: ${runs.map((r) => r.block.id).join(' → ')}`);

    expect(await virsh.domState(s.vm)).toBe('running');
    expect(await guestReadMatches(s.vm, 'vda', A, '0', '1M')).toBe(true);
    expect(await guestReadMatches(s.vm, 'vda', B, '2M', '1M')).toBe(true);
    expect(await backingFileOf(s.image)).toBeUndefined();
    expect(await virsh.dumpXml(s.vm, { inactive: true })).toContain('<description>changed after the backup</description>');
    expect(ldifEntries(await w.directory.exportVmLdif(s.vm))).toEqual(ldifEntries(s.liveLdifBefore));
    expect(await ldapSearch(w.slapd, `ou=backup,${vmDn(s.vm)}`)).toBe(s.backupSubtreeBefore);
    await expectRetainClean(s);
  });
});
