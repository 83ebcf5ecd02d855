import { describe, expect, it } from 'vitest';
import { checkpointName, checkpointsToDrop, leafOfCheckpoint, trackedChanges } from '../../src/domain/changeTracking.js';

const BASE = '20261130T010000Z';
const name = checkpointName(BASE);
const good = { baseLeaf: BASE, bitmaps: [{ name, flags: ['auto'] }], checkpoints: [name] };

describe('trackedChanges', () => {
  it('uses the base backup\'s bitmap when it records, was stored cleanly and libvirt knows its checkpoint', () => {
    expect(trackedChanges(good)).toEqual({ use: 'bitmap', bitmap: 'stoney-20261130T010000Z' });
  });

  it.each([
    ['no checkpoint', { ...good, checkpoints: [] }, /no checkpoint/],
    ['another backup\'s checkpoint only', { ...good, checkpoints: [checkpointName('20261129T010000Z')] }, /no checkpoint/],
    ['no bitmap', { ...good, bitmaps: [] }, /no bitmap/],
    ['a crash left the bitmap in use', { ...good, bitmaps: [{ name, flags: ['in-use', 'auto'] }] }, /in-use/],
    ['a disabled bitmap', { ...good, bitmaps: [{ name, flags: [] }] }, /not recording/],
    ['an external data file', { ...good, dataFile: '/x' }, /external/],
  ])('compares contents with %s', (_what, input, why) => {
    const r = trackedChanges(input);
    expect(r.use).toBe('comparison');
    expect(r.use === 'comparison' ? r.why : '').toMatch(why);
  });
});

describe('checkpoint names', () => {
  it('round-trip a leaf and ignore foreign checkpoints', () => {
    expect(leafOfCheckpoint(checkpointName(BASE))).toBe(BASE);
    expect(leafOfCheckpoint('virtnbdbackup.0')).toBeUndefined();
    expect(leafOfCheckpoint('stoney-../../etc')).toBeUndefined();
  });

  it('drops only this project\'s checkpoints older than the finished backup, oldest first', () => {
    const names = ['virtnbdbackup.0', checkpointName('20261130T030000Z'), checkpointName('20261130T010000Z'), checkpointName('20261130T020000Z'), checkpointName('20261130T040000Z')];
    expect(checkpointsToDrop(names, '20261130T030000Z')).toEqual(['stoney-20261130T010000Z', 'stoney-20261130T020000Z']);
  });
});
