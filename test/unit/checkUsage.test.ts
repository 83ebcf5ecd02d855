import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli/runCli.js';

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (l: string) => out.push(l), err: (l: string) => err.push(l) }, out, err };
}

describe('bad options and arguments', () => {
  it('check answers UNKNOWN (3) in one plugin line on stdout, as monitoring systems read it', async () => {
    for (const args of [['--bogus'], ['vm1', '--max-age'], ['--json=yes']]) {
      const c = capture();
      expect(await main(['check', ...args], c.io), args.join(' ')).toBe(3);
      expect(c.out.length).toBe(1);
      expect(c.out[0]).toMatch(/^UNKNOWN: \S/);
      expect(c.out[0]).not.toContain('\n');
      expect(c.err).toEqual([]);
    }
  });

  it('other commands keep the usage exit code (2) and print the usage on stderr', async () => {
    const c = capture();
    expect(await main(['list', '--bogus'], c.io)).toBe(2);
    expect(c.out).toEqual([]);
    expect(c.err.join('\n')).toMatch(/^stoney-backup list: Unknown option '--bogus'[^]*\nUsage: stoney-backup list /);
  });
});
