import { describe, expect, it } from 'vitest';
import { directoryFromUrl } from '../../src/domain/fileUrl.js';
import { BackupError } from '../../src/domain/errors.js';

function failure(value: string): BackupError {
  try {
    directoryFromUrl('sstBackupRootDirectory', value);
  } catch (err) {
    return err as BackupError;
  }
  throw new Error(`${value} was accepted`);
}

describe('directoryFromUrl', () => {
  it('turns file:// URLs into paths', () => {
    expect(directoryFromUrl('sstBackupRootDirectory', 'file:///var/backup/virtualization')).toBe('/var/backup/virtualization');
    expect(directoryFromUrl('sstBackupRetainDirectory', 'file:///var/virtualization/retain')).toBe('/var/virtualization/retain');
    expect(directoryFromUrl('sstBackupRootDirectory', 'file:///x')).toBe('/x');
    expect(directoryFromUrl('sstBackupRootDirectory', 'file:///var/backup/')).toBe('/var/backup/');
    expect(directoryFromUrl('sstBackupRootDirectory', 'file://localhost/var/backup')).toBe('/var/backup');
    expect(directoryFromUrl('sstBackupRootDirectory', 'file:///mnt/with%20space')).toBe('/mnt/with space');
    expect(directoryFromUrl('sstBackupRootDirectory', 'FILE:///x')).toBe('/x');
  });

  it('accepts a bare absolute path, normalised', () => {
    expect(directoryFromUrl('sstBackupRamDiskLocation', '/mnt/ramdisk-test')).toBe('/mnt/ramdisk-test');
    expect(directoryFromUrl('sstBackupRamDiskLocation', '/var//cache/./kvmbackup')).toBe('/var/cache/kvmbackup');
    expect(directoryFromUrl('sstBackupRamDiskLocation', '/var/cache/../x')).toBe('/var/x');
  });

  it('rejects other protocols with code 35 (unsupported file transfer protocol)', () => {
    for (const v of ['http://backup.example.com/x', 'https://x/y', 'ftp://x/y', 'sftp://host/var/backup', 'nfs://server/export']) {
      const e = failure(v);
      expect(e, v).toBeInstanceOf(BackupError);
      expect(e.code, v).toBe(35);
      expect(e.message.startsWith(`sstBackupRootDirectory: ${JSON.stringify(v)} uses `)).toBe(true);
    }
    expect(failure('http://x/y').message).toBe('sstBackupRootDirectory: "http://x/y" uses http://, only file:// is supported');
  });

  it('rejects what is not a URL with code 39', () => {
    for (const v of ['garbage', 'var/backup', '', './x', '::::']) {
      const e = failure(v);
      expect(e, v).toBeInstanceOf(BackupError);
      expect(e.code, v).toBe(39);
    }
    expect(failure('garbage').message).toBe('sstBackupRootDirectory: "garbage" is not a URL');
  });

  it('rejects a file URL naming another host with a BackupError, not a TypeError', () => {
    // file://server/x is a remote location, which is not supported.
    const e = failure('file://backupserver/var/backup');
    expect(e).toBeInstanceOf(BackupError);
    expect([35, 39]).toContain(e.code);
  });

  it('rejects a file URL with an encoded slash with a BackupError (39), not a TypeError', () => {
    const e = failure('file:///var/a%2Fb');
    expect(e).toBeInstanceOf(BackupError);
    expect(e.code).toBe(39);
  });

  it('rejects a file URL with an encoded NUL byte (39) instead of returning a path containing NUL', () => {
    const e = failure('file:///var/a%00b');
    expect(e).toBeInstanceOf(BackupError);
    expect(e.code).toBe(39);
  });
});
