import { describe, expect, it } from 'vitest';
import { returnCodeOf } from '../helpers/returnCodeOf.js';
import { BackupLayout, MANIFEST_NAME, NO_STATE_MARKER, vmTypeDirectory, type BackupLayoutInput } from '../../src/domain/layout.js';

const pool = '0f83f084-8080-413e-b558-b678e504836e';
const input: BackupLayoutInput = {
  rootDirectory: '/var/backup/virtualization',
  retainDirectory: '/var/virtualization/retain',
  vmType: 'vm-persistent',
  pool,
  vm: 'kvm-005',
  leaf: '20121002T010000Z',
};

const codeOf = returnCodeOf;

describe('BackupLayout', () => {
  const l = new BackupLayout(input);

  it('places the retain directory at <retain>/<vm-type>/<pool>/<vm>/<leaf>', () => {
    expect(l.retainDir).toBe(`/var/virtualization/retain/vm-persistent/${pool}/kvm-005/20121002T010000Z`);
  });

  it('places backups at <root>/<vm-type>/<pool>/<vm>/<leaf>', () => {
    expect(l.vmBackupDir).toBe(`/var/backup/virtualization/vm-persistent/${pool}/kvm-005`);
    expect(l.backupDir).toBe(`/var/backup/virtualization/vm-persistent/${pool}/kvm-005/20121002T010000Z`);
  });

  it('names the VM files <vm>.state, <vm>.xml, <vm>.ldif', () => {
    expect(l.stateFileName).toBe('kvm-005.state');
    expect(l.xmlFileName).toBe('kvm-005.xml');
    expect(l.ldifFileName).toBe('kvm-005.ldif');
  });

  it('keeps retained files under their own name', () => {
    expect(l.retainPath(l.stateFileName)).toBe(`/var/virtualization/retain/vm-persistent/${pool}/kvm-005/20121002T010000Z/kvm-005.state`);
    expect(l.retainPath('vda.qcow2')).toBe(`/var/virtualization/retain/vm-persistent/${pool}/kvm-005/20121002T010000Z/vda.qcow2`);
  });

  it('names backup files <file>.<leaf>', () => {
    const dir = `/var/backup/virtualization/vm-persistent/${pool}/kvm-005/20121002T010000Z`;
    expect(l.backupPath(l.stateFileName)).toBe(`${dir}/kvm-005.state.20121002T010000Z`);
    expect(l.backupPath(l.xmlFileName)).toBe(`${dir}/kvm-005.xml.20121002T010000Z`);
    expect(l.backupPath(l.ldifFileName)).toBe(`${dir}/kvm-005.ldif.20121002T010000Z`);
    expect(l.backupPath('vda.qcow2')).toBe(`${dir}/vda.qcow2.20121002T010000Z`);
    expect(l.manifestPath).toBe(`${dir}/manifest.json`);
    expect(MANIFEST_NAME).toBe('manifest.json');
  });

  it('keeps the original no-state marker text, typo included', () => {
    expect(NO_STATE_MARKER).toBe('Machine is not runnung, no state file');
  });

  it('normalises the configured directories', () => {
    const m = new BackupLayout({ ...input, rootDirectory: '/var/backup/virtualization/', retainDirectory: '/var//virtualization/./retain/' });
    expect(m.backupDir).toBe(`/var/backup/virtualization/vm-persistent/${pool}/kvm-005/20121002T010000Z`);
    expect(m.retainDir).toBe(`/var/virtualization/retain/vm-persistent/${pool}/kvm-005/20121002T010000Z`);
  });

  it('rejects unsafe path components with code 52', () => {
    for (const [key, value] of [
      ['vmType', '../etc'],
      ['vmType', ''],
      ['pool', 'a/b'],
      ['pool', '..'],
      ['vm', '.hidden'],
      ['vm', '-rf'],
      ['vm', '../../../root'],
      ['leaf', '..'],
      ['leaf', '20121002T010000Z/..'],
    ] as const) {
      expect(codeOf(() => new BackupLayout({ ...input, [key]: value })), `${key}=${value}`).toBe(52);
    }
  });

  it('rejects unsafe file names with code 52', () => {
    for (const name of ['../kvm-005.state', 'a/b', '.state', '-x', '']) {
      expect(codeOf(() => l.retainPath(name)), name).toBe(52);
      expect(codeOf(() => l.backupPath(name)), name).toBe(52);
    }
  });
});

describe('vmTypeDirectory', () => {
  it('maps sstVirtualMachineType to the directory under the roots', () => {
    expect(vmTypeDirectory('persistent')).toBe('vm-persistent');
    expect(vmTypeDirectory('dynamic')).toBe('vm-dynamic');
    expect(vmTypeDirectory('template')).toBe('vm-templates');
    expect(vmTypeDirectory('templates')).toBe('vm-templates');
    expect(vmTypeDirectory('vm-persistent')).toBe('vm-persistent');
    expect(vmTypeDirectory('vm-templates')).toBe('vm-templates');
    expect(vmTypeDirectory('other')).toBe('vm-other');
  });

  it('refuses a VM without a type with 63 instead of naming a `vm-` directory', () => {
    expect(() => vmTypeDirectory('')).toThrow(expect.objectContaining({ code: 63 }));
  });

  it('returns a string for type names that are Object.prototype members', () => {
    expect(vmTypeDirectory('toString')).toBe('vm-toString');
    expect(vmTypeDirectory('constructor')).toBe('vm-constructor');
    expect(typeof vmTypeDirectory('__proto__')).toBe('string');
  });
});
