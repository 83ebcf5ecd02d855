import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  addDeviceElement,
  diskElement,
  domainFacts,
  interfaceElement,
  removeDisk,
  removeInterface,
  removeUuid,
  setDiskSource,
  setInterfaceMac,
  setMemoryKiB,
  setName,
  setVcpus,
} from '../../src/domain/restore/domainFacts.js';
import { parseDomainDisks } from '../../src/hypervisor/domainXml.js';

/** Real output captured from libvirt 9.0 / QEMU 7.2 (see test/fixtures). */
function fixture(name: string): string {
  return readFileSync(new URL(`../fixtures/${name}`, import.meta.url), 'utf8');
}
const inactive = fixture('dumpxml-inactive.xml');
const running = fixture('dumpxml-running-backing-chain.xml');

/** An interface as libvirt writes it (the fixtures have none). */
const NIC = [
  "<interface type='network'>",
  "      <mac address='52:54:00:aa:bb:01'/>",
  "      <source network='default'/>",
  "      <model type='virtio'/>",
  "      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>",
  '    </interface>',
].join('\n');

/** Lines of b that are not in a, and of a not in b (order-insensitive, enough for single-line edits). */
function changedLines(a: string, b: string): { removed: string[]; added: string[] } {
  const la = a.split('\n');
  const lb = b.split('\n');
  return { removed: la.filter((l) => !lb.includes(l)), added: lb.filter((l) => !la.includes(l)) };
}

describe('domainFacts', () => {
  it('reads the facts of a real inactive definition', () => {
    expect(domainFacts(inactive)).toEqual({
      name: 'exp1',
      uuid: 'b61efb1d-ee53-4959-aef0-ba160f1be74f',
      memoryKiB: 32768,
      currentMemoryKiB: 32768,
      vcpus: 1,
      disks: [
        { target: 'vda', source: '/tmp/exp/img/d1.qcow2', format: 'qcow2' },
        { target: 'vdb', source: '/tmp/exp/img/d2.qcow2', format: 'qcow2' },
      ],
      interfaces: [],
    });
  });

  it('takes the top source of a running disk with a backing chain', () => {
    expect(domainFacts(running).disks).toEqual([
      { target: 'vda', source: '/tmp/exp/img/d1.qcow2', format: 'qcow2' },
      { target: 'vdb', source: '/tmp/exp/img/d2.qcow2', format: 'qcow2' },
    ]);
  });

  it('reads interfaces, memory in other units, and vcpus with a current attribute', () => {
    const xml = addDeviceElement(inactive, NIC)
      .replace("<memory unit='KiB'>32768</memory>", "<memory unit='MiB'>64</memory>")
      .replace(/[ \t]*<currentMemory[^\n]*\n/, '')
      .replace("<vcpu placement='static'>1</vcpu>", "<vcpu placement='static' current='2'>4</vcpu>");
    const f = domainFacts(xml);
    expect(f.memoryKiB).toBe(65536);
    expect(f.currentMemoryKiB).toBeUndefined();
    expect(f.vcpus).toBe(4);
    expect(f.interfaces).toEqual([{ mac: '52:54:00:aa:bb:01', type: 'network', source: 'default', model: 'virtio' }]);
  });
});

describe('XML edits change exactly their element', () => {
  it('setMemoryKiB sets memory and currentMemory', () => {
    const out = setMemoryKiB(inactive, 65536);
    expect(changedLines(inactive, out)).toEqual({
      removed: ["  <memory unit='KiB'>32768</memory>", "  <currentMemory unit='KiB'>32768</currentMemory>"],
      added: ["  <memory unit='KiB'>65536</memory>", "  <currentMemory unit='KiB'>65536</currentMemory>"],
    });
    expect(domainFacts(setMemoryKiB(inactive, 65536, 49152))).toMatchObject({ memoryKiB: 65536, currentMemoryKiB: 49152 });
    const mib = inactive.replace("<memory unit='KiB'>32768</memory>", "<memory unit='MiB'>32</memory>");
    expect(setMemoryKiB(mib, 1024)).toContain("<memory unit='KiB'>1024</memory>");
    expect(() => setMemoryKiB(inactive, 0)).toThrow(/invalid memory size/);
    expect(() => setMemoryKiB(inactive, 1024, 2048)).toThrow(/invalid current memory/);
  });

  it('setVcpus', () => {
    expect(changedLines(inactive, setVcpus(inactive, 3))).toEqual({
      removed: ["  <vcpu placement='static'>1</vcpu>"],
      added: ["  <vcpu placement='static'>3</vcpu>"],
    });
    const withCurrent = inactive.replace("<vcpu placement='static'>1</vcpu>", "<vcpu placement='static' current='1'>4</vcpu>");
    expect(setVcpus(withCurrent, 2)).toContain("  <vcpu placement='static'>2</vcpu>\n");
  });

  it('setDiskSource changes the one target and keeps backing stores and other attributes', () => {
    expect(changedLines(inactive, setDiskSource(inactive, 'vdb', '/new/d2.qcow2'))).toEqual({
      removed: ["      <source file='/tmp/exp/img/d2.qcow2'/>"],
      added: ["      <source file='/new/d2.qcow2'/>"],
    });
    const out = setDiskSource(running, 'vdb', "/new/o'brien & co.qcow2");
    expect(out).toContain(`<source file='/new/o&apos;brien &amp; co.qcow2' index='1'/>`);
    expect(parseDomainDisks(out)[1]).toMatchObject({ source: "/new/o'brien & co.qcow2", backingChain: ['/tmp/exp/retain/d2.qcow2'] });
    expect(() => setDiskSource(inactive, 'vdz', '/x')).toThrow(/no disk with target vdz/);
  });

  it('setInterfaceMac replaces or adds the MAC of the i-th interface', () => {
    const xml = addDeviceElement(inactive, NIC);
    expect(changedLines(xml, setInterfaceMac(xml, 0, '52:54:00:AA:00:02'))).toEqual({
      removed: ["      <mac address='52:54:00:aa:bb:01'/>"],
      added: ["      <mac address='52:54:00:aa:00:02'/>"],
    });
    const noMac = xml.replace("      <mac address='52:54:00:aa:bb:01'/>\n", '');
    expect(setInterfaceMac(noMac, 0, '52:54:00:aa:00:03')).toBe(xml.replace('bb:01', '00:03'));
    expect(() => setInterfaceMac(xml, 1, '52:54:00:aa:00:02')).toThrow(/no interface number 1/);
    expect(() => setInterfaceMac(xml, 0, 'nonsense')).toThrow(/invalid MAC/);
  });

  it('setName escapes, removeUuid drops the line', () => {
    expect(changedLines(inactive, setName(inactive, 'a&b'))).toEqual({ removed: ['  <name>exp1</name>'], added: ['  <name>a&amp;b</name>'] });
    expect(domainFacts(setName(inactive, 'a&b')).name).toBe('a&b');
    const noUuid = removeUuid(inactive);
    expect(changedLines(inactive, noUuid)).toEqual({ removed: ['  <uuid>b61efb1d-ee53-4959-aef0-ba160f1be74f</uuid>'], added: [] });
    expect(noUuid.split('\n')).toHaveLength(inactive.split('\n').length - 1);
    expect(domainFacts(noUuid).uuid).toBeUndefined();
  });

  it('adds and removes disks and interfaces in libvirt formatting', () => {
    const one = addDeviceElement(inactive, NIC);
    expect(one).toContain(`    <memballoon model='none'/>\n    <interface type='network'>\n      <mac address='52:54:00:aa:bb:01'/>`);
    expect(one).toContain(`function='0x0'/>\n    </interface>\n  </devices>`);
    const two = addDeviceElement(one, NIC.replace('bb:01', 'bb:02'));
    expect(domainFacts(two).interfaces.map((n) => n.mac)).toEqual(['52:54:00:aa:bb:01', '52:54:00:aa:bb:02']);
    expect(interfaceElement(two, 1)).toBe(NIC.replace('bb:01', 'bb:02'));
    expect(removeInterface(two, 1)).toBe(one);
    expect(removeInterface(one, 0)).toBe(inactive);

    const vdb = diskElement(inactive, 'vdb');
    expect(vdb).toBeDefined();
    const withoutVdb = removeDisk(inactive, 'vdb');
    expect(domainFacts(withoutVdb).disks.map((d) => d.target)).toEqual(['vda']);
    expect(addDeviceElement(withoutVdb, vdb ?? '')).toBe(inactive);
  });
});
