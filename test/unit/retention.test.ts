import { describe, expect, it } from 'vitest';
import { selectBackupDirsToPrune, selectBackupsToPrune, type RetentionLeaf } from '../../src/domain/retention.js';

const day = (d: number) => `202607${String(d).padStart(2, '0')}T010000Z`;
const ok = (d: number): RetentionLeaf => ({ leaf: day(d), mode: 'finished', returnValue: 0 });
const failed = (d: number, returnValue = 5): RetentionLeaf => ({ leaf: day(d), mode: 'finished', returnValue });
const busy = (d: number, mode: string): RetentionLeaf => ({ leaf: day(d), mode, returnValue: 0 });

describe('selectBackupsToPrune', () => {
  it('keeps the newest `keep` successful backups and prunes older ones, oldest first', () => {
    expect(selectBackupsToPrune([ok(1), ok(2), ok(3), ok(4)], 2)).toEqual([day(1), day(2)]);
    expect(selectBackupsToPrune([ok(4), ok(2), ok(1), ok(3)], 2)).toEqual([day(1), day(2)]);
    expect(selectBackupsToPrune([ok(1), ok(2), ok(3), ok(4)], 1)).toEqual([day(1), day(2), day(3)]);
  });

  it('prunes nothing while there are no more than `keep`', () => {
    expect(selectBackupsToPrune([], 1)).toEqual([]);
    expect(selectBackupsToPrune([ok(1)], 1)).toEqual([]);
    expect(selectBackupsToPrune([ok(1), ok(2)], 2)).toEqual([]);
    expect(selectBackupsToPrune([ok(1), ok(2)], 5)).toEqual([]);
  });

  it('never prunes the newest finished backup, even with keep 0 or nonsense', () => {
    expect(selectBackupsToPrune([ok(1), ok(2)], 0)).toEqual([day(1)]);
    expect(selectBackupsToPrune([ok(1), ok(2)], -3)).toEqual([day(1)]);
    expect(selectBackupsToPrune([ok(1), ok(2)], Number.NaN)).toEqual([day(1)]);
  });

  it('never prunes a leaf that is in progress', () => {
    const leaves = [busy(1, 'snapshotting'), ok(2), busy(3, 'retaining'), ok(4), busy(5, 'initialize'), ok(6), busy(7, 'merge')];
    expect(selectBackupsToPrune(leaves, 1)).toEqual([day(2), day(4)]);
    // A newer backup that has not finished does not count towards `keep`.
    expect(selectBackupsToPrune([ok(1), busy(2, 'snapshotted')], 1)).toEqual([]);
    // Leaves being restored or already being deleted are left alone.
    const other = [busy(1, 'unretainingSmallFiles'), busy(2, 'restoring'), busy(3, 'delete'), busy(4, 'deleting'), busy(5, 'deleted'), ok(6), ok(7)];
    expect(selectBackupsToPrune(other, 1)).toEqual([day(6)]);
  });

  it('prunes failed finished leaves older than the newest kept backup', () => {
    expect(selectBackupsToPrune([failed(1), ok(2), failed(3), ok(4)], 2)).toEqual([day(1), day(3)]);
    expect(selectBackupsToPrune([ok(1), failed(2), ok(3)], 5)).toEqual([day(2)]);
  });

  it('keeps failed leaves newer than the newest successful one, and the newest finished one', () => {
    expect(selectBackupsToPrune([ok(1), ok(2), failed(3), failed(4)], 1)).toEqual([day(1)]);
    expect(selectBackupsToPrune([ok(1), failed(2)], 1)).toEqual([]);
  });

  it('prunes nothing when no backup ever succeeded', () => {
    expect(selectBackupsToPrune([failed(1), failed(2), failed(3, 11)], 1)).toEqual([]);
  });

  it('treats a missing return value as success', () => {
    const noValue = (d: number): RetentionLeaf => ({ leaf: day(d), mode: 'finished' });
    expect(selectBackupsToPrune([noValue(1), noValue(2), noValue(3)], 2)).toEqual([day(1)]);
  });

  it('ignores entries that are not leaf names', () => {
    expect(
      selectBackupsToPrune([{ leaf: 'backup', mode: 'finished', returnValue: 0 }, { leaf: '20261301T010000Z', mode: 'finished' }, ok(1), ok(2)], 1),
    ).toEqual([day(1)]);
  });

  it('orders across months and years by time', () => {
    const leaves: RetentionLeaf[] = ['20270101T010000Z', '20261231T230000Z', '20261002T010000Z'].map((leaf) => ({ leaf, mode: 'finished', returnValue: 0 }));
    expect(selectBackupsToPrune(leaves, 1, new Date('2027-01-02T00:00:00Z'))).toEqual(['20261002T010000Z', '20261231T230000Z']);
  });

  it('does not let a future-dated leaf pin the newest: it takes no kept slot and is left alone', () => {
    const now = new Date('2026-07-05T12:00:00Z');
    const future: RetentionLeaf = { leaf: '20991231T000000Z', mode: 'finished', returnValue: 0 };
    // keep 2: the two newest real backups stay (4 and 3); before, 2099 took a slot and pushed 3 out.
    expect(selectBackupsToPrune([future, ok(1), ok(2), ok(3), ok(4)], 2, now)).toEqual([day(1), day(2)]);
    // A failed leaf newer than the newest real success is kept, whatever the future leaf says.
    expect(selectBackupsToPrune([future, ok(1), ok(2), failed(3)], 1, now)).toEqual([day(1)]);
    // Within the tolerance (clock skew) it is an ordinary, newest leaf.
    expect(selectBackupsToPrune([{ leaf: '20260705T123000Z', mode: 'finished' }, ok(1), ok(2)], 1, now)).toEqual([day(1), day(2)]);
  });
});

describe('selectBackupDirsToPrune', () => {
  const now = new Date('2026-07-30T00:00:00Z');
  it('keeps the newest `keep` by leaf time and the protected ones, and selects the rest oldest first', () => {
    const dirs = [day(3), day(1), day(2), day(4)];
    expect(selectBackupDirsToPrune(dirs, 2, new Set(), now)).toEqual([day(1), day(2)]);
    expect(selectBackupDirsToPrune(dirs, 1, new Set([day(2)]), now)).toEqual([day(1), day(3)]);
    expect(selectBackupDirsToPrune(dirs, 0, new Set(), now)).toEqual([day(1), day(2), day(3)]);
    expect(selectBackupDirsToPrune(dirs, 4, new Set(), now)).toEqual([]);
    expect(selectBackupDirsToPrune([], 1, new Set(), now)).toEqual([]);
  });

  it('does not let a future-dated directory take a kept slot, and never removes it', () => {
    expect(selectBackupDirsToPrune(['20991231T000000Z', day(1), day(2), day(3)], 2, new Set(), now)).toEqual([day(1)]);
  });

  it('never considers names that are not valid leaf names', () => {
    const dirs = [
      day(1),
      `${day(2)}.partial`,
      'lost+found',
      '.snapshot',
      '20121302T010000Z', // month 13
      '20120230T010000Z', // 30 February
      '20121002T250000Z', // hour 25
      '20121002t010000z',
      '20121002T010000',
      '../20121002T010000Z',
      '',
    ];
    expect(selectBackupDirsToPrune([...dirs, day(2)], 1, new Set(), now)).toEqual([day(1)]);
  });

  it('lists a name once even if given twice', () => {
    expect(selectBackupDirsToPrune([day(1), day(1), day(2)], 1, new Set(), now)).toEqual([day(1)]);
  });
});
