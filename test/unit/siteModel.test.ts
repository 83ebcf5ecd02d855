import { describe, expect, it } from 'vitest';
import { SiteModel } from '../../src/control/SiteModel.js';
import type { SiteEntry } from '../../src/directory/types.js';

const BASE = 'o=test';
const SERVICE = `ou=virtualization,ou=services,${BASE}`;
const VMS = `ou=virtual machines,${SERVICE}`;
const POOL = 'pool-1';

function vm(name: string, node: string, csn = '20260101000000.000000Z#000000#000#000000'): SiteEntry {
  return { dn: `sstVirtualMachine=${name},${VMS}`, attributes: { objectclass: ['sstVirtualizationVirtualMachine'], sstvirtualmachine: [name], sstnode: [node], sstvirtualmachinepool: [POOL], entrycsn: [csn] } };
}

function leaf(vmName: string, name: string, mode: string, csn: string, rv = '0'): SiteEntry {
  return {
    dn: `ou=${name},ou=backup,sstVirtualMachine=${vmName},${VMS}`,
    attributes: { objectclass: ['organizationalUnit', 'sstProvisioning'], ou: [name], sstprovisioningmode: [mode], sstprovisioningreturnvalue: [rv], entrycsn: [csn] },
  };
}

const csn = (n: number) => `20260101000000.${String(n).padStart(6, '0')}Z#000000#000#000000`;
const L = '20260101T030000Z';

describe('SiteModel', () => {
  it('keeps the newest state of a leaf by entryCSN, whatever order the states arrive in', () => {
    const m = new SiteModel(BASE);
    m.putLeaf(leaf('a', L, 'snapshotted', csn(3)));
    m.putLeaf(leaf('a', L, 'snapshot', csn(2)));
    expect(m.batch(L).map((l) => l.mode)).toEqual(['snapshotted']);
    m.putLeaf(leaf('a', L, 'merge', csn(4)));
    expect(m.batch(L).map((l) => l.mode)).toEqual(['merge']);
  });

  it('applies its own won write at once and ignores the late echo of an earlier mode', () => {
    const m = new SiteModel(BASE);
    const dn = `ou=${L},ou=backup,sstVirtualMachine=a,${VMS}`;
    m.noteCreated(dn, 'a', L, new Date());
    m.noteWritten(dn, 'initialize', 'initialized', {}, new Date());
    m.noteWritten(dn, 'initialized', 'snapshot', { state: '0' }, new Date());
    expect(m.batch(L).map((l) => [l.mode, l.state])).toEqual([['snapshot', '0']]);
    m.putLeaf(leaf('a', L, 'initialize', csn(1))); // the feed's echo of the add
    m.putLeaf(leaf('a', L, 'initialized', csn(2)));
    expect(m.batch(L).map((l) => l.mode)).toEqual(['snapshot']);
    m.putLeaf(leaf('a', L, 'snapshotting', csn(4))); // a node's claim
    expect(m.batch(L).map((l) => l.mode)).toEqual(['snapshotting']);
    // A write whose answer comes after the feed told of a later state does not undo it.
    m.noteWritten(dn, 'snapshot', 'snapshotted', { returnValue: 49 }, new Date());
    expect(m.batch(L).map((l) => l.mode)).toEqual(['snapshotting']);
  });

  it('lists a batch in VM name order and the other leaves of its VMs', () => {
    const m = new SiteModel(BASE);
    for (const name of ['c', 'a', 'b']) m.putLeaf(leaf(name, L, 'initialize', csn(1)));
    m.putLeaf(leaf('b', '20251231T030000Z', 'merging', csn(1)));
    expect(m.batch(L).map((l) => l.vm)).toEqual(['a', 'b', 'c']);
    expect(m.otherLeavesOfVms(m.batch(L), L).map((l) => `${l.vm}/${l.leaf}/${l.mode}`)).toEqual(['b/20251231T030000Z/merging']);
    m.removeLeaf(leaf('a', L, 'initialize', csn(1)).dn);
    expect(m.batch(L).map((l) => l.vm)).toEqual(['b', 'c']);
  });

  it('resolves settings VM → pool → global from memory, and sees a change of the global entry', () => {
    const m = new SiteModel(BASE);
    m.putVm(vm('a', 'n1'));
    m.putVm(vm('b', 'n2'));
    const global = `ou=backup,ou=configuration,${SERVICE}`;
    const cron = (minute: string) => ({
      objectclass: ['organizationalUnit', 'sstCronObjectClass'], sstcronminute: [minute], sstcronhour: ['3'], sstcronday: ['*'],
      sstcronmonth: ['*'], sstcrondayofweek: ['*'], sstcronactive: ['TRUE'],
    });
    m.putSettings({ dn: global, attributes: cron('0') });
    m.putSettings({ dn: `ou=backup,sstVirtualMachinePool=${POOL},ou=virtual machine pools,${SERVICE}`, attributes: { objectclass: ['sstVirtualizationBackupObjectClass'], sstbackupnumberofiterations: ['3'] } });
    m.putSettings({ dn: `ou=backup,sstVirtualMachine=b,${VMS}`, attributes: { objectclass: ['sstVirtualizationBackupObjectClass'], sstbackupexcludefrombackup: ['TRUE'] } });
    const a = m.settingsOf(m.vm('a')!);
    expect({ minute: a.cron?.minute, keep: a.backup.numberOfIterations, excluded: a.excluded }).toEqual({ minute: '0', keep: 3, excluded: false });
    expect(m.settingsOf(m.vm('b')!).excluded).toBe(true);
    m.putSettings({ dn: global, attributes: cron('30') });
    expect(m.settingsOf(m.vm('a')!).cron?.minute).toBe('30');
    expect(m.nodeOf('A')).toBe('n1');
  });
});
