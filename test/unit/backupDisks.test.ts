import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { isBelow, selectBackupDisks } from '../../src/node/backupDisks.js';
import { parseDomainDisks, type DomainDisk } from '../../src/hypervisor/domainXml.js';
import { BackupError } from '../../src/domain/errors.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

const logger = pino({ level: 'silent' });
const roots = ['/var/virtualization'];
const retain = '/var/virtualization/retain';

function fixture(name: string): string {
  return readFileSync(new URL(`../fixtures/${name}`, import.meta.url), 'utf8');
}

function disk(over: Partial<DomainDisk>): DomainDisk {
  return {
    type: 'file',
    device: 'disk',
    target: 'vda',
    format: 'qcow2',
    source: '/var/virtualization/vm-persistent/pool1/vda.qcow2',
    backingChain: [],
    backingFormats: [],
    ...over,
  };
}

/** The BackupError thrown by f, so the tests can compare code and message. */
function backupErrorOf(f: () => unknown): BackupError {
  try {
    f();
  } catch (err) {
    if (err instanceof BackupError) return err;
    throw new Error(`expected a BackupError, got ${String(err)}`);
  }
  throw new Error('expected a BackupError, nothing was thrown');
}

describe('selectBackupDisks', () => {
  it('selects file disks with their basenames, in domain order', () => {
    const disks = [
      disk({ target: 'vda', source: '/var/virtualization/vm-persistent/pool1/a.qcow2' }),
      disk({ target: 'vdb', source: '/var/virtualization/vm-persistent/pool1/b.img', format: 'raw' }),
    ];
    expect(selectBackupDisks(disks, roots, retain, logger)).toEqual([
      { target: 'vda', source: '/var/virtualization/vm-persistent/pool1/a.qcow2', format: 'qcow2', fileName: 'a.qcow2' },
      { target: 'vdb', source: '/var/virtualization/vm-persistent/pool1/b.img', format: 'raw', fileName: 'b.img' },
    ]);
  });

  it('takes raw as the format when the domain names no driver type', () => {
    expect(selectBackupDisks([disk({ format: undefined })], roots, retain, logger)).toEqual([
      { target: 'vda', source: '/var/virtualization/vm-persistent/pool1/vda.qcow2', format: 'raw', fileName: 'vda.qcow2' },
    ]);
  });

  it('skips cdroms, floppies, block, network and source-less disks', () => {
    const disks = [
      disk({ target: 'hdc', device: 'cdrom', source: '/var/virtualization/iso/debian.iso', format: 'raw' }),
      disk({ target: 'hdd', device: 'cdrom', source: undefined }),
      disk({ target: 'fda', device: 'floppy', source: '/var/virtualization/fd.img' }),
      disk({ target: 'vdb', type: 'block', source: '/dev/vg0/lv0', format: 'raw' }),
      disk({ target: 'vdc', type: 'network', source: undefined }),
      disk({ target: 'vdd', source: undefined }),
      disk({ target: 'vde', source: '/var/virtualization/vm-persistent/pool1/vde.qcow2' }),
    ];
    expect(selectBackupDisks(disks, roots, retain, logger)).toEqual([
      { target: 'vde', source: '/var/virtualization/vm-persistent/pool1/vde.qcow2', format: 'qcow2', fileName: 'vde.qcow2' },
    ]);
  });

  it('returns nothing for a domain without file disks', () => {
    expect(selectBackupDisks([disk({ device: 'cdrom', source: undefined })], roots, retain, logger)).toEqual([]);
    expect(selectBackupDisks([], roots, retain, logger)).toEqual([]);
  });

  it('accepts a disk below any of several image roots', () => {
    const disks = [disk({ target: 'vda', source: '/srv/images/a.qcow2' }), disk({ target: 'vdb', source: '/var/virtualization/b.qcow2' })];
    expect(selectBackupDisks(disks, ['/var/virtualization', '/srv/images/'], retain, logger).map((d) => d.fileName)).toEqual(['a.qcow2', 'b.qcow2']);
  });

  it.each([
    ['a sibling directory sharing the prefix', '/var/virtualizationX/a.qcow2'],
    ['another tree', '/tmp/a.qcow2'],
    ['a .. escape', '/var/virtualization/../etc/a.qcow2'],
    ['a relative path', 'var/virtualization/a.qcow2'],
    ['the root itself', '/var/virtualization'],
  ])('refuses a disk outside the image roots: %s (code 53)', (_what, source) => {
    const err = backupErrorOf(() => selectBackupDisks([disk({ source })], roots, retain, logger));
    expect(err.code).toBe(ReturnCode.diskOutsideImageRoots);
    expect(err.code).toBe(53);
    expect(err.message).toContain('vda');
  });

  it('refuses the whole domain when one disk is outside, even after good ones', () => {
    const disks = [disk({ target: 'vda' }), disk({ target: 'vdb', source: '/home/user/b.qcow2' })];
    expect(backupErrorOf(() => selectBackupDisks(disks, roots, retain, logger)).code).toBe(53);
  });

  it('refuses a disk whose chain still runs into retain (code 55)', () => {
    const d = disk({ backingChain: ['/var/virtualization/retain/vm-persistent/pool1/kvm-1/20240101T010000Z/vda.qcow2'] });
    const err = backupErrorOf(() => selectBackupDisks([d], roots, retain, logger));
    expect(err.code).toBe(ReturnCode.chainStillReferencesRetain);
    expect(err.code).toBe(55);
    expect(err.message).toContain('/var/virtualization/retain/vm-persistent/pool1/kvm-1/20240101T010000Z/vda.qcow2');
  });

  it('finds retain anywhere in the chain, not only the nearest backing file', () => {
    const d = disk({ backingChain: ['/var/virtualization/base/mid.qcow2', '/var/virtualization/retain/old.qcow2'] });
    expect(backupErrorOf(() => selectBackupDisks([d], roots, retain, logger)).code).toBe(55);
  });

  it('accepts a chain into a template outside retain, and a sibling of retain with the same prefix', () => {
    const d = disk({ backingChain: ['/var/virtualization/vm-templates/pool1/base.qcow2', '/var/virtualization/retainer/x.qcow2'] });
    expect(selectBackupDisks([d], roots, retain, logger)).toHaveLength(1);
  });

  it('refuses the captured running domain whose vdb is backed by the retain file (code 55)', () => {
    const disks = parseDomainDisks(fixture('dumpxml-running-backing-chain.xml'));
    const err = backupErrorOf(() => selectBackupDisks(disks, ['/tmp/exp/img'], '/tmp/exp/retain', logger));
    expect(err.code).toBe(55);
    expect(err.message).toContain('vdb');
    expect(err.message).toContain('/tmp/exp/retain/d2.qcow2');
  });

  it('selects both disks of the captured inactive domain', () => {
    const disks = parseDomainDisks(fixture('dumpxml-inactive.xml'));
    expect(selectBackupDisks(disks, ['/tmp/exp/img'], '/tmp/exp/retain', logger)).toEqual([
      { target: 'vda', source: '/tmp/exp/img/d1.qcow2', format: 'qcow2', fileName: 'd1.qcow2' },
      { target: 'vdb', source: '/tmp/exp/img/d2.qcow2', format: 'qcow2', fileName: 'd2.qcow2' },
    ]);
  });

  it('refuses two disks with one basename in different directories (code 39)', () => {
    const disks = [
      disk({ target: 'vda', source: '/var/virtualization/vm-persistent/pool1/disk.qcow2' }),
      disk({ target: 'vdb', source: '/var/virtualization/vm-persistent/pool2/disk.qcow2' }),
    ];
    const err = backupErrorOf(() => selectBackupDisks(disks, roots, retain, logger));
    expect(err.code).toBe(ReturnCode.unsupportedConfigurationParameter);
    expect(err.message).toContain('disk.qcow2');
  });

  it('refuses an image whose basename is not a safe name (code 52)', () => {
    const err = backupErrorOf(() => selectBackupDisks([disk({ source: '/var/virtualization/p/-x.qcow2' })], roots, retain, logger));
    expect(err.code).toBe(ReturnCode.unsafeName);
  });
});

describe('isBelow', () => {
  it.each([
    ['/var/virt', '/var/virt/a.qcow2', true],
    ['/var/virt', '/var/virt/sub/dir/a.qcow2', true],
    ['/var/virt/', '/var/virt/a.qcow2', true],
    ['/var/virt', '/var/virt/sub/../a.qcow2', true],
    ['/var/virt', '/var/virtualization/x', false],
    ['/var/virt', '/var/virt', false],
    ['/var/virt', '/var/virt/', false],
    ['/var/virt', '/var/virt/.', false],
    ['/var/virt', '/var/virt/..', false],
    ['/var/virt', '/var/virt/../virtualization/x', false],
    ['/var/virt', '/var/virt/a/../../etc/passwd', false],
    ['/var/virt', '/var', false],
    ['/var/virt', '/', false],
    ['/', '/var/virt', true],
  ])('isBelow(%j, %j) is %s', (root, p, expected) => {
    expect(isBelow(root, p)).toBe(expected);
  });

  // A directory entry whose name merely begins with two dots is inside the root:
  // only ".." itself (or "../…") leaves it.
  it.each([
    ['/var/virt', '/var/virt/..hidden/a.qcow2'],
    ['/var/virt', '/var/virt/...'],
  ])('isBelow(%j, %j) is true: a name starting with ".." is not a parent reference', (root, p) => {
    expect(isBelow(root, p)).toBe(true);
  });
});
