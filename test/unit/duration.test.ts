import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration } from '../../src/domain/duration.js';
import { UsageError } from '../../src/domain/errors.js';

describe('parseDuration', () => {
  it('reads units, combinations and bare seconds', () => {
    expect(parseDuration('26h')).toBe(26 * 3_600_000);
    expect(parseDuration('90m')).toBe(5_400_000);
    expect(parseDuration('1d12h')).toBe(36 * 3_600_000);
    expect(parseDuration('45s')).toBe(45_000);
    expect(parseDuration('2w')).toBe(14 * 86_400_000);
    expect(parseDuration('3600')).toBe(3_600_000);
  });

  it('refuses what is not a positive duration', () => {
    for (const bad of ['', 'h', '-1h', '1.5h', '26 h', '1y', '0h', '0']) {
      expect(() => parseDuration(bad), bad).toThrow(UsageError);
    }
  });
});

describe('formatDuration', () => {
  it('writes the short form back', () => {
    expect(formatDuration(26 * 3_600_000)).toBe('26h');
    expect(formatDuration(50 * 3_600_000 + 5_000)).toBe('50h5s');
    expect(formatDuration(5_400_000)).toBe('1h30m');
    expect(formatDuration(0)).toBe('0s');
  });
});
