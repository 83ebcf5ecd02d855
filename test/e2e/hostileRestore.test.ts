import { describe, expect, it } from 'vitest';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { guestReadMatches, guestWrite, virsh } from '../helpers/libvirt.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { runRestore, type RestoreDecisions } from '../../src/control/runRestore.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { BackupLayout } from '../../src/domain/layout.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';
import { run } from '../../src/hypervisor/exec.js';
import { fileDigest } from '../../src/node/fileDigest.js';
import { readManifest } from '../../src/node/retainStep.js';

/**
 * Reproductions 1 and 5 of issue #10 against the real node daemon: a writer
 * of backup files edits the backup's domain XML or its disk image header. The
 * restore must refuse with its code before anything live is touched, whatever
 * the conflict decisions, and nothing outside the test's roots may change.
 */
const A = 0xab;
const B = 0xcd;
const policy = { ...defaultBatchPolicy, claimTimeoutMs: 60_000 };

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

const layoutOf = (vm: string, leaf: string): BackupLayout => w.layoutOf(vm, leaf);

async function backedUp(short: string, leaf: string) {
  const vm = await w.addVm(short, { running: true, pattern: A });
  const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(vm.name))!], leaf, policy, logger: w.logger });
  expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
  await guestWrite(vm.name, 'vda', B, '2M', '1M');
  return vm;
}

async function restore(vm: string, leaf: string, decide: RestoreDecisions, target?: string) {
  const l = (await w.directory.listLeaves(vm)).find((x) => x.leaf === leaf)!;
  return runRestore({ directory: w.directory, vm: (await w.directory.getVm(vm))!, leaf: l, policy, logger: w.logger, pollMs: 100, decide: async () => decide, ...(target ? { target } : {}) });
}

/** Files (with size, mode and mtime) below the given roots: what a refused restore must leave as it was. */
async function tree(...dirs: string[]): Promise<string> {
  const out = await execa('find', [...dirs, '-printf', '%p %y %s %m %T@\n']);
  return out.stdout.split('\n').sort().join('\n');
}

async function hostFiles(): Promise<string> {
  const files = ['/etc/shadow', '/etc/passwd', '/etc/cron.d'];
  return (await Promise.all(files.map(async (f) => `${f} ${(await stat(f)).mtimeMs} ${(await stat(f)).ctimeMs}`))).join('\n');
}

const hostileDevices = `    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/etc/shadow'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/sda'/>
      <target dev='vdz' bus='virtio'/>
    </disk>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='/'/>
      <target dir='host'/>
    </filesystem>
    <serial type='file'>
      <source path='/etc/cron.d/stoney-pwned'/>
      <target port='0'/>
    </serial>
  </devices>`;

describe('a backup whose domain XML was edited by a writer of backup files', () => {
  it.each([
    ['taking the backup', { prefer: 'backup', overrides: {} } as RestoreDecisions, undefined],
    ['taking the live values', { prefer: 'live', overrides: {} } as RestoreDecisions, undefined],
    ['as a new VM', { prefer: 'backup', overrides: {} } as RestoreDecisions, 'copy'],
  ])('is refused with 58 %s, with the VM, its definition and every file as before', async (_how, decide, as) => {
    const short = `hx${as ? 'n' : decide.prefer[0]}`;
    const leaf = '20261122T060000Z';
    const vm = await backedUp(short, leaf);
    const xmlFile = layoutOf(vm.name, leaf).backupPath(`${vm.name}.xml`);
    await writeFile(xmlFile, (await readFile(xmlFile, 'utf8')).replace('  </devices>', hostileDevices));
    const before = { definition: await virsh.dumpXml(vm.name, { inactive: true }), files: await tree(w.imageRoot, w.backupRoot), host: await hostFiles() };
    const target = as ? w.name(as) : undefined;
    const r = await restore(vm.name, leaf, decide, target);
    expect({ outcome: r.outcome, failedAt: r.failedAt }).toEqual({ outcome: 'failed', failedAt: { mode: 'restored', returnValue: ReturnCode.unsafeDomainDefinition } });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
    if (target) expect(await virsh.domainExists(target)).toBe(false);
    expect({ definition: await virsh.dumpXml(vm.name, { inactive: true }), files: await tree(w.imageRoot, w.backupRoot), host: await hostFiles() }).toEqual(before);
    await expect(stat('/etc/cron.d/stoney-pwned')).rejects.toThrow(/ENOENT/);
  });
});

describe('a backup whose domain XML lost its file disk', () => {
  it.each([
    ['in the XML only: refused with 33 (XML and directory entries disagree)', false, ReturnCode.backendXmlInconsistency],
    ['in the XML and the LDIF: refused with 58', true, ReturnCode.unsafeDomainDefinition],
  ])('%s, before anything live is touched', async (_how, alsoLdif, code) => {
    const leaf = alsoLdif ? '20261122T060300Z' : '20261122T060200Z';
    const vm = await backedUp(alsoLdif ? 'hnol' : 'hnox', leaf);
    const layout = layoutOf(vm.name, leaf);
    const xmlFile = layout.backupPath(`${vm.name}.xml`);
    const xml = await readFile(xmlFile, 'utf8');
    const withoutDisk = xml.replace(/<disk type='file' device='disk'>[\s\S]*?<\/disk>\n?/, '');
    expect(withoutDisk).not.toBe(xml);
    await writeFile(xmlFile, withoutDisk);
    if (alsoLdif) {
      const ldifFile = layout.backupPath(layout.ldifFileName);
      const entries = (await readFile(ldifFile, 'utf8')).split(/\n\n+/);
      const kept = entries.filter((e) => !/^dn: sstDisk=vda,/m.test(e));
      expect(kept.length).toBe(entries.length - 1);
      await writeFile(ldifFile, kept.join('\n\n'));
    }
    const before = { definition: await virsh.dumpXml(vm.name, { inactive: true }), files: await tree(w.imageRoot, w.backupRoot) };
    const r = await restore(vm.name, leaf, { prefer: 'backup', overrides: {} });
    expect({ outcome: r.outcome, failedAt: r.failedAt }).toEqual({ outcome: 'failed', failedAt: { mode: 'restored', returnValue: code } });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
    expect({ definition: await virsh.dumpXml(vm.name, { inactive: true }), files: await tree(w.imageRoot, w.backupRoot) }).toEqual(before);
  });
});

describe('a backup whose disk image header names a host file as backing', () => {
  it('is refused with 59 before the image is opened or anything live is touched', async () => {
    const leaf = '20261122T060100Z';
    const vm = await backedUp('hhdr', leaf);
    const layout = layoutOf(vm.name, leaf);
    const image = layout.backupPath(path.basename(vm.disks[0]!.path));
    // The writer swaps in an image whose header names /etc/shadow, and fixes the manifest to match.
    await run('qemu-img', ['rebase', '-q', '-u', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/shadow', image]);
    const manifest = await readManifest(layout.manifestPath);
    const entry = manifest.files.find((f) => f.name === path.basename(image))!;
    Object.assign(entry, await fileDigest(image, 'sha256PerMiB'));
    await writeFile(layout.manifestPath, JSON.stringify(manifest));
    const before = { definition: await virsh.dumpXml(vm.name, { inactive: true }), files: await tree(w.imageRoot, w.backupRoot), host: await hostFiles() };
    const r = await restore(vm.name, leaf, { prefer: 'backup', overrides: {} });
    expect({ outcome: r.outcome, failedAt: r.failedAt }).toEqual({ outcome: 'failed', failedAt: { mode: 'unretainedLargeFiles', returnValue: ReturnCode.unsafeImageHeader } });
    expect(await virsh.domState(vm.name)).toBe('running');
    expect(await guestReadMatches(vm.name, 'vda', B, '2M', '1M')).toBe(true);
    expect({ definition: await virsh.dumpXml(vm.name, { inactive: true }), files: await tree(w.imageRoot, w.backupRoot), host: await hostFiles() }).toEqual(before);
  });
});
