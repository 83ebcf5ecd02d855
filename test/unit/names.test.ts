import { describe, expect, it } from 'vitest';
import { assertSafeName, isSafeName } from '../../src/domain/names.js';
import { BackupError } from '../../src/domain/errors.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

const safe = [
  'ok-name_1',
  'kvm-005',
  'vm-001',
  'vm-persistent',
  'vda',
  'vda.qcow2',
  '4a6b7e5c-1f2d-4c3b-9a8e-0d1c2b3a4f5e', // UUID as in production
  '4A6B7E5C-1F2D-4C3B-9A8E-0D1C2B3A4F5E',
  '20121002T010000Z',
  '_x',
  'a',
  '0',
  'host:port',
  'user@host',
  'a+b',
  'vm.state',
  'a'.repeat(128),
];

const unsafe = [
  '../x',
  '..',
  '.',
  'a/b',
  '/abs',
  'a/',
  '.hidden',
  '-rf',
  '--force',
  'a..b',
  'x..',
  '',
  ' ',
  'a b',
  'a\nb',
  'a\0b',
  'a\\b',
  'a;b',
  '$(id)',
  'a`b`',
  'a*b',
  'ä',
  '+x',
  '@x',
  ':x',
  'a'.repeat(129),
];

describe('isSafeName', () => {
  it.each(safe)('accepts %j', (s) => {
    expect(isSafeName(s)).toBe(true);
  });
  it.each(unsafe)('rejects %j', (s) => {
    expect(isSafeName(s)).toBe(false);
  });
});

describe('assertSafeName', () => {
  it('returns a safe name unchanged', () => {
    expect(assertSafeName('VM name', 'kvm-005')).toBe('kvm-005');
  });

  it('throws BackupError with code unsafeName (52) naming what and the value', () => {
    for (const s of ['../x', 'a/b', '.hidden', '-rf', undefined]) {
      let caught: unknown;
      try {
        assertSafeName('VM name', s);
      } catch (err) {
        caught = err;
      }
      expect(caught, String(s)).toBeInstanceOf(BackupError);
      expect((caught as BackupError).code).toBe(ReturnCode.unsafeName);
      expect((caught as BackupError).code).toBe(52);
      expect((caught as BackupError).message.startsWith(`VM name ${JSON.stringify(s)} is not a safe name`)).toBe(true);
    }
  });
});
