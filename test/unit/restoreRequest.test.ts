import { describe, expect, it } from 'vitest';
import { parseRestoreRequest } from '../../src/domain/restore/restoreRequest.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';

const WHERE = 'ou=restore,ou=20260101T000000Z,…';
const parse = (v: unknown) => parseRestoreRequest(typeof v === 'string' ? v : JSON.stringify(v), WHERE);

describe('parseRestoreRequest: the ou=restore entry is untrusted input', () => {
  it('reads what this project writes', () => {
    const r = { target: 'vm-copy', retain: '20260102T030405Z', requestedAt: '20260102T030400Z', conflicts: [{ id: 'memory' }], decisions: { prefer: 'live', overrides: { memory: 'backup' } } };
    expect(parse(r)).toEqual(r);
    expect(parse({})).toEqual({});
  });

  it('drops unknown fields', () => {
    expect(parse({ target: 'a', shell: 'rm -rf /' })).toEqual({ target: 'a' });
  });

  it.each([
    ['not JSON', '{"target":', /is not JSON/],
    ['an array', [], /is not a JSON object/],
    ['a target with a slash', { target: '../../etc' }, /restore target "..\/..\/etc", which is not a safe VM name/],
    ['a numeric target', { target: 7 }, /target that is not a string/],
    ['a retain directory that climbs out', { retain: '../../../etc' }, /retain that is not a YYYYMMDDTHHMMSSZ time/],
    ['conflicts that are no list', { conflicts: 'x' }, /conflicts that are not a list/],
    ['decisions with another side', { decisions: { prefer: 'guest', overrides: {} } }, /unusable decisions: .*"prefer" must be/],
  ])('refuses %s with 39 (an unsafe name with its own code)', (what, value, message) => {
    expect(() => parse(value)).toThrow(message);
    try {
      parse(value);
    } catch (err) {
      expect(err).toMatchObject({ code: what.includes('slash') ? ReturnCode.unsafeName : 39 });
      expect((err as Error).message.startsWith(WHERE)).toBe(true);
    }
  });
});
