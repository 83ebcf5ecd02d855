import { describe, expect, it } from 'vitest';
import { returnCodeOf } from '../helpers/returnCodeOf.js';
import { storagePoolPath, type PoolPathDisk } from '../../src/domain/storagePoolPath.js';

const SP = 'f9dc3c13-5e3a-4b1c-9d2e-7a6b5c4d3e21';
const disk = (target: string, sourceFile: string | undefined, device = 'disk', type = 'file'): PoolPathDisk => ({ target, device, type, sourceFile });

const codeOf = returnCodeOf;

describe('storagePoolPath (the original\'s dirname(sstSourceFile) below the image root)', () => {
  it('is <vm-type>/<storage-pool> of the disk image', () => {
    expect(storagePoolPath([disk('vda', `/var/virtualization/vm-persistent/${SP}/a.qcow2`)], ['/var/virtualization'])).toEqual({ vmType: 'vm-persistent', pool: SP });
  });

  it('takes the first disk when the disks span storage pools, and skips cdroms and network disks', () => {
    const disks = [
      disk('vdb', '/var/virtualization/vm-persistent/other/b.qcow2'),
      disk('hdc', '/var/virtualization/iso/x.iso', 'cdrom'),
      disk('vdc', undefined, 'disk', 'network'),
      disk('vda', `/var/virtualization/vm-templates/${SP}/a.qcow2`),
    ];
    expect(storagePoolPath(disks, ['/var/virtualization'])).toEqual({ vmType: 'vm-templates', pool: SP });
  });

  it('uses whichever image root holds the disk', () => {
    expect(storagePoolPath([disk('vda', `/srv/images/vm-dynamic/${SP}/a.qcow2`)], ['/var/virtualization', '/srv/images/'])).toEqual({ vmType: 'vm-dynamic', pool: SP });
  });

  it('refuses a path it cannot derive instead of guessing', () => {
    expect(codeOf(() => storagePoolPath([disk('vda', '/etc/a.qcow2')], ['/var/virtualization']))).toBe(53);
    expect(codeOf(() => storagePoolPath([disk('vda', '/var/virtualization/a.qcow2')], ['/var/virtualization']))).toBe(62);
    expect(codeOf(() => storagePoolPath([disk('vda', `/var/virtualization/vm-persistent/${SP}/deeper/a.qcow2`)], ['/var/virtualization']))).toBe(62);
    expect(codeOf(() => storagePoolPath([disk('vda', '/var/virtualization/vm-persistent/../../etc/a.qcow2')], ['/var/virtualization']))).toBe(53);
    expect(codeOf(() => storagePoolPath([disk('vda', 'relative/a.qcow2')], ['/var/virtualization']))).toBe(53);
    expect(codeOf(() => storagePoolPath([disk('hdc', '/var/virtualization/iso/x.iso', 'cdrom')], ['/var/virtualization']))).toBe(62);
    expect(codeOf(() => storagePoolPath([disk('vda', '/var/virtualization/vm-persistent/.hidden/a.qcow2')], ['/var/virtualization']))).toBe(52);
  });
});
