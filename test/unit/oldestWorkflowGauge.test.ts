import { describe, expect, it } from 'vitest';
import { BackupMetrics, type SiteView } from '../../src/metrics/BackupMetrics.js';
import { evaluateBackupCheck } from '../../src/control/evaluateBackupCheck.js';
import type { LeafEntry } from '../../src/directory/types.js';
import type { EffectiveSettings } from '../../src/domain/settings.js';
import { parsePromText, sampleValue } from '../helpers/promText.js';

const NOW = new Date('2026-11-29T12:00:00Z');
const SIX_HOURS_S = 6 * 3600;

function leaf(vm: string, name: string, mode: string, returnValue?: number): LeafEntry {
  return {
    dn: `ou=${name},ou=backup,sstVirtualMachine=${vm},ou=virtual machines,ou=virtualization,ou=services,o=test`,
    vm, leaf: name, mode, state: '0', returnValue, executionTime: {}, modifiedAt: undefined,
  };
}

/** The site as the control daemon holds it: VMs, their leaves, whether each is excluded. */
function site(vms: { name: string; excluded?: boolean; leaves: LeafEntry[] }[]): SiteView {
  return {
    allVms: () => vms,
    settingsOf: (vm) => ({ excluded: vms.find((v) => v.name === vm.name)?.excluded ?? false }) as EffectiveSettings,
    leavesOfVm: (name) => vms.find((v) => v.name === name)?.leaves ?? [],
  };
}

async function oldest(vms: Parameters<typeof site>[0]) {
  const m = new BackupMetrics({ daemon: 'control' });
  m.watchSite(site(vms), { maxRuntimeMs: SIX_HOURS_S * 1000 }, () => NOW.getTime());
  const s = parsePromText((await m.render()).body).samples;
  expect(sampleValue(s, 'stoney_backup_step_timeout_seconds')).toBe(SIX_HOURS_S);
  return { backup: sampleValue(s, 'stoney_backup_oldest_workflow_age_seconds', { protocol: 'backup' }), restore: sampleValue(s, 'stoney_backup_oldest_workflow_age_seconds', { protocol: 'restore' }) };
}

describe('stoney_backup_oldest_workflow_age_seconds', () => {
  it('is 0 per protocol while nothing runs', async () => {
    expect(await oldest([{ name: 'a', leaves: [leaf('a', '20261129T020000Z', 'finished', 0)] }])).toEqual({ backup: 0, restore: 0 });
  });

  it('is the age of the oldest running workflow, left out: blocked ones and excluded VMs — what check warns about', async () => {
    const vms = [
      { name: 'slow', leaves: [leaf('slow', '20261128T200000Z', 'finished', 0), leaf('slow', '20261129T020000Z', 'merging')] },
      { name: 'fresh', leaves: [leaf('fresh', '20261129T110000Z', 'snapshotting')] },
      { name: 'blocked', leaves: [leaf('blocked', '20261128T000000Z', 'merging', 8)] },
      { name: 'excl', excluded: true, leaves: [leaf('excl', '20261127T000000Z', 'retaining')] },
      { name: 'rest', leaves: [leaf('rest', '20261129T090000Z', 'unretainingLargeFiles')] },
    ];
    const g = await oldest(vms);
    expect(g).toEqual({ backup: 10 * 3600, restore: 3 * 3600 });
    // the alert rule (age > stoney_backup_step_timeout_seconds) and check agree: a backup runs long, no restore does
    const check = evaluateBackupCheck(vms.map((v) => ({ name: v.name, excluded: v.excluded ?? false, leaves: v.leaves })), NOW, { maxAgeMs: 26 * 3_600_000, maxRuntimeMs: SIX_HOURS_S * 1000 });
    const runsLong = check.vms.filter((v) => v.reasons.some((r) => / runs for /.test(r))).map((v) => v.vm);
    expect(runsLong).toEqual(['slow']);
    expect([g.backup! > SIX_HOURS_S, g.restore! > SIX_HOURS_S]).toEqual([true, false]);
  });
});
