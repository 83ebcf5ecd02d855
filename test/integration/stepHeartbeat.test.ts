/**
 * A long step that shows progress keeps its leaf alive for the control
 * side's step timeout; a hung one (no progress) does not; a step whose leaf
 * was taken away (timed out) stops writing. Real slapd: the age the control
 * side judges is the server's modifyTimestamp.
 */
import { describe, expect, it } from 'vitest';
import pino from 'pino';
import { setTimeout as sleep } from 'node:timers/promises';
import { useSlapdWithDirectory } from '../helpers/useSlapd.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { StepHeartbeat } from '../../src/node/StepHeartbeat.js';
import { decideBatch, defaultBatchPolicy } from '../../src/control/decideBatch.js';

let dir: LdapBackupDirectory;
useSlapdWithDirectory((s) => ({ dir } = s));
const log = pino({ level: 'silent' });

async function leafAt(leaf: string, mode: string) {
  expect(await dir.createLeaf('kvm-001', leaf)).toBe(true);
  const [l] = (await dir.listLeaves('kvm-001')).filter((x) => x.leaf === leaf);
  expect(await dir.casMode(l!.dn, 'initialize', mode, { state: '0' })).toBe(true);
  return (await dir.getLeaf(l!.dn))!;
}

describe('StepHeartbeat', () => {
  // modifyTimestamp has whole seconds: the waits below span more than one.
  it('touches the leaf while the step reports progress, so a 2 s step timeout does not fire', async () => {
    const before = await leafAt('20250101T000000Z', 'merging');
    const hb = new StepHeartbeat(dir, before.dn, 'merging', 200, log).start();
    for (let i = 0; i < 12; i++) {
      hb.noteProgress();
      await sleep(200);
    }
    await hb.stop();
    const after = (await dir.getLeaf(before.dn))!;
    expect({ mode: after.mode, state: after.state, lost: hb.lost }).toEqual({ mode: 'merging', state: '0', lost: false });
    expect(after.modifiedAt!.getTime()).toBeGreaterThan(before.modifiedAt!.getTime());
    // Judged shortly after the last sign of life, the step is not timed out — it would be by its start alone.
    const policy = { ...defaultBatchPolicy, stepTimeoutMs: 2_000 };
    const judgedAt = new Date(after.modifiedAt!.getTime() + 1_500);
    expect(decideBatch([after], policy, judgedAt)).toEqual([]);
    expect(decideBatch([before], policy, judgedAt).map((w) => w.next)).toEqual(['merged']);
  });

  it('writes nothing while the step shows no progress (a hung step still times out)', async () => {
    const before = await leafAt('20250102T000000Z', 'retaining');
    const hb = new StepHeartbeat(dir, before.dn, 'retaining', 200, log).start();
    await sleep(1_500);
    await hb.stop();
    expect((await dir.getLeaf(before.dn))!.modifiedAt).toEqual(before.modifiedAt);
  });

  it('notices a leaf taken away from the step and stops writing', async () => {
    const before = await leafAt('20250103T000000Z', 'snapshotting');
    const hb = new StepHeartbeat(dir, before.dn, 'snapshotting', 100, log).start();
    expect(await dir.casMode(before.dn, 'snapshotting', 'snapshotted', { state: '20250103T000500Z', returnValue: 49 })).toBe(true);
    hb.noteProgress();
    await sleep(400);
    hb.noteProgress();
    await sleep(300);
    await hb.stop();
    expect(hb.lost).toBe(true);
    const after = (await dir.getLeaf(before.dn))!;
    expect({ mode: after.mode, rv: after.returnValue, state: after.state }).toEqual({ mode: 'snapshotted', rv: 49, state: '20250103T000500Z' });
  });
});
