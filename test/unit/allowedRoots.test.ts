import { describe, expect, it } from 'vitest';
import { assertAllowedDirectories, DEFAULT_ALLOWED_ROOTS } from '../../src/domain/allowedRoots.js';
import { backupSettingsFromAttributes } from '../../src/domain/settings.js';
import { BackupError } from '../../src/domain/errors.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

const roots = ['/var/backup/virtualization', '/var/virtualization/retain', '/dev/shm'];
const settingsWith = (a: Record<string, string>) =>
  backupSettingsFromAttributes('ou=backup,sstVirtualMachine=vm1', Object.fromEntries(Object.entries(a).map(([k, v]) => [k, [v]])));

function codeOf(f: () => void): number | undefined {
  try {
    f();
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(BackupError);
    return (err as BackupError).code;
  }
}

describe('the node-side allowlist of backup, retain and RAM-disk roots', () => {
  it('accepts the defaults, the roots themselves and directories below them', () => {
    expect(codeOf(() => assertAllowedDirectories(settingsWith({}), DEFAULT_ALLOWED_ROOTS))).toBeUndefined();
    expect(codeOf(() => assertAllowedDirectories(settingsWith({
      sstbackuprootdirectory: 'file:///var/backup/virtualization/site-a',
      sstbackupretaindirectory: 'file:///var/virtualization/retain',
      sstbackupramdisklocation: 'file:///dev/shm/stoney',
    }), roots))).toBeUndefined();
  });

  it.each([
    ['sstbackuprootdirectory', 'file:///etc'],
    ['sstbackuprootdirectory', 'file:///'],
    ['sstbackuprootdirectory', 'file:///var/backup/virtualization/../../../etc'],
    ['sstbackuprootdirectory', 'file:///var/backup/virtualization-evil'],
    ['sstbackupretaindirectory', 'file:///root'],
    ['sstbackupretaindirectory', 'file:///var/virtualization'],
    ['sstbackupramdisklocation', 'file:///tmp'],
    ['sstbackupramdisklocation', 'file:///var/lib/libvirt/qemu'],
  ])('refuses %s=%s with code 60', (attribute, value) => {
    expect(codeOf(() => assertAllowedDirectories(settingsWith({ [attribute]: value }), roots))).toBe(ReturnCode.directoryNotAllowed);
  });

  it('names the attribute, the entry and the key in the message', () => {
    expect(() => assertAllowedDirectories(settingsWith({ sstbackupretaindirectory: 'file:///root' }), roots)).toThrow(
      'sstBackupRetainDirectory /root (from ou=backup,sstVirtualMachine=vm1) is outside this node\'s allowed roots /var/backup/virtualization:/var/virtualization/retain:/dev/shm (STONEY_ALLOWED_ROOTS)',
    );
  });
});
