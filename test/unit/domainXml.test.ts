import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  parseDomainDisks,
  parseDomainMemoryBytes,
  parseDomainName,
  parseDomState,
  stripBackingStores,
  type DomainDisk,
} from '../../src/hypervisor/domainXml.js';

/** Real output captured from libvirt 9.0 / QEMU 7.2 (see test/fixtures). */
function fixture(name: string): string {
  return readFileSync(new URL(`../fixtures/${name}`, import.meta.url), 'utf8');
}

const running = fixture('dumpxml-running-backing-chain.xml');
const inactive = fixture('dumpxml-inactive.xml');
const saveImage = fixture('save-image-dumpxml.xml');

const d1: DomainDisk = { type: 'file', device: 'disk', target: 'vda', format: 'qcow2', source: '/tmp/exp/img/d1.qcow2', backingChain: [], backingFormats: [] };
const d2: DomainDisk = { type: 'file', device: 'disk', target: 'vdb', format: 'qcow2', source: '/tmp/exp/img/d2.qcow2', backingChain: [], backingFormats: [] };

/** The input minus every line that belongs to a <backingStore> element (the fixtures put each tag on its own line). */
function withoutBackingStoreLines(xml: string): string {
  const out: string[] = [];
  let depth = 0;
  for (const line of xml.split('\n')) {
    const t = line.trim();
    if (depth === 0 && t === '<backingStore/>') continue;
    if (/^<backingStore\b[^>]*[^/]>$/.test(t)) {
      depth += 1;
      continue;
    }
    if (depth > 0) {
      if (t === '</backingStore>') depth -= 1;
      continue;
    }
    out.push(line);
  }
  return out.join('\n');
}

describe('parseDomainDisks on captured virsh dumpxml', () => {
  it('reads both disks of a running domain, with vdb backed by the retain file', () => {
    expect(parseDomainDisks(running)).toEqual([d1, { ...d2, backingChain: ['/tmp/exp/retain/d2.qcow2'], backingFormats: ['qcow2'] }]);
  });

  it('reads both disks of an inactive domain without backing chains', () => {
    expect(parseDomainDisks(inactive)).toEqual([d1, d2]);
  });

  it('reads the XML stored in a save image (vda with an empty <backingStore/>)', () => {
    expect(parseDomainDisks(saveImage)).toEqual([d1, d2]);
  });

  it('lists a deeper chain nearest first', () => {
    const xml = `<domain type='kvm'>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/virtualization/top.qcow2' index='3'/>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/var/virtualization/middle.qcow2'/>
        <backingStore type='file' index='1'>
          <format type='raw'/>
          <source file='/var/virtualization/base.raw'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>`;
    expect(parseDomainDisks(xml)).toEqual([
      {
        type: 'file',
        device: 'disk',
        target: 'vda',
        format: 'qcow2',
        source: '/var/virtualization/top.qcow2',
        backingChain: ['/var/virtualization/middle.qcow2', '/var/virtualization/base.raw'],
        backingFormats: ['qcow2', 'raw'],
      },
    ]);
  });

  it('handles a cdrom without medium, a block disk, a raw file and entities in paths', () => {
    const xml = `<domain type='kvm'>
  <name>web&amp;db</name>
  <devices>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/vg0/lv&amp;data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type="file" device="disk">
      <source file="/var/virtualization/vm-persistent/p1/a&amp;b &lt;c&gt; it&apos;s &quot;q&quot; &#233;.img"/>
      <target dev="vdc" bus="virtio"/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/image'>
        <host name='mon1' port='6789'/>
      </source>
      <target dev='vdd' bus='virtio'/>
    </disk>
  </devices>
</domain>`;
    expect(parseDomainDisks(xml)).toEqual([
      { type: 'file', device: 'cdrom', target: 'hdc', format: 'raw', source: undefined, backingChain: [], backingFormats: [] },
      { type: 'block', device: 'disk', target: 'vdb', format: 'raw', source: '/dev/vg0/lv&data', backingChain: [], backingFormats: [] },
      {
        type: 'file',
        device: 'disk',
        target: 'vdc',
        format: undefined,
        source: `/var/virtualization/vm-persistent/p1/a&b <c> it's "q" é.img`,
        backingChain: [],
        backingFormats: [],
      },
      { type: 'network', device: 'disk', target: 'vdd', format: 'raw', source: undefined, backingChain: [], backingFormats: [] },
    ]);
    expect(parseDomainName(xml)).toBe('web&db');
  });

  it('decodes &amp; last, so an escaped entity stays literal', () => {
    const xml = `<domain><devices><disk type='file' device='disk'><source file='/v/a&amp;lt;b'/><target dev='vda'/></disk></devices></domain>`;
    expect(parseDomainDisks(xml)[0]?.source).toBe('/v/a&lt;b');
  });

  it('finds no disks in XML without <disk> elements', () => {
    expect(parseDomainDisks('<domain type="kvm"><name>x</name><devices/></domain>')).toEqual([]);
  });
});

describe('parseDomainMemoryBytes', () => {
  it('reads 32768 KiB from every captured XML', () => {
    expect(parseDomainMemoryBytes(running)).toBe(33_554_432);
    expect(parseDomainMemoryBytes(inactive)).toBe(33_554_432);
    expect(parseDomainMemoryBytes(saveImage)).toBe(33_554_432);
  });

  it('prefers currentMemory over memory', () => {
    const xml = `<domain><memory unit='KiB'>65536</memory><currentMemory unit='KiB'>32768</currentMemory></domain>`;
    expect(parseDomainMemoryBytes(xml)).toBe(32 * 1024 * 1024);
  });

  it('falls back to memory when there is no currentMemory', () => {
    expect(parseDomainMemoryBytes(`<domain><memory unit='MiB'>512</memory></domain>`)).toBe(512 * 1024 ** 2);
  });

  it('does not take <memoryBacking> or <maxMemory> for <memory>', () => {
    const xml = `<domain><maxMemory slots='16' unit='KiB'>1524288</maxMemory><memory unit='KiB'>2048</memory><memoryBacking><hugepages/></memoryBacking></domain>`;
    expect(parseDomainMemoryBytes(xml)).toBe(2048 * 1024);
  });

  it.each([
    ['b', 1000, 1000],
    ['bytes', 1000, 1000],
    ['KB', 2, 2000],
    ['k', 2, 2048],
    ['KiB', 2, 2048],
    ['MB', 3, 3_000_000],
    ['M', 3, 3 * 1024 ** 2],
    ['MiB', 3, 3 * 1024 ** 2],
    ['GB', 2, 2_000_000_000],
    ['G', 2, 2 * 1024 ** 3],
    ['GiB', 2, 2 * 1024 ** 3],
    ['TB', 1, 1e12],
    ['T', 1, 1024 ** 4],
    ['TiB', 1, 1024 ** 4],
  ])('unit %s: %i → %i bytes', (unit, n, bytes) => {
    expect(parseDomainMemoryBytes(`<domain><memory unit='${unit}'>${n}</memory></domain>`)).toBe(bytes);
  });

  it('defaults to KiB without a unit attribute', () => {
    expect(parseDomainMemoryBytes('<domain><memory>1024</memory></domain>')).toBe(1024 * 1024);
  });

  it('returns 0 when there is no memory element', () => {
    expect(parseDomainMemoryBytes('<domain><name>x</name></domain>')).toBe(0);
  });
});

describe('parseDomainName', () => {
  it('reads the domain name from every captured XML', () => {
    expect(parseDomainName(running)).toBe('exp1');
    expect(parseDomainName(inactive)).toBe('exp1');
    expect(parseDomainName(saveImage)).toBe('exp1');
  });

  it('is undefined without a <name>', () => {
    expect(parseDomainName('<domain type="kvm"><uuid>x</uuid></domain>')).toBeUndefined();
  });
});

describe('stripBackingStores', () => {
  it('removes the empty and the nested backingStore of the running domain and nothing else', () => {
    const out = stripBackingStores(running);
    expect(out).toBe(withoutBackingStoreLines(running));
    // 1 line for vda's <backingStore/>, 5 lines for vdb's nested block.
    expect(running.split('\n').length - out.split('\n').length).toBe(6);
    expect(out).not.toContain('backingStore');
    expect(out).not.toContain('/tmp/exp/retain');
    expect(out).toContain(`      <source file='/tmp/exp/img/d2.qcow2' index='1'/>\n      <target dev='vdb' bus='virtio'/>\n`);
    expect(out).toContain(`      <source file='/tmp/exp/img/d1.qcow2' index='2'/>\n      <target dev='vda' bus='virtio'/>\n`);
  });

  it('re-parses to the same sources with empty backing chains', () => {
    const disks = parseDomainDisks(stripBackingStores(running));
    expect(disks).toEqual([d1, d2]);
    expect(parseDomainMemoryBytes(stripBackingStores(running))).toBe(33_554_432);
    expect(parseDomainName(stripBackingStores(running))).toBe('exp1');
  });

  it("removes the save image's <backingStore/> line only", () => {
    const out = stripBackingStores(saveImage);
    expect(out).toBe(withoutBackingStoreLines(saveImage));
    expect(saveImage.split('\n').length - out.split('\n').length).toBe(1);
    expect(out).toContain(`      <source file='/tmp/exp/img/d1.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n`);
  });

  it('leaves XML without backingStore byte-identical', () => {
    expect(stripBackingStores(inactive)).toBe(inactive);
  });

  it('is idempotent', () => {
    const once = stripBackingStores(running);
    expect(stripBackingStores(once)).toBe(once);
  });

  it('removes a deeper nested chain and a self-closing backingStore with attributes', () => {
    const xml = [
      `<disk type='file' device='disk'>`,
      `  <source file='/v/top.qcow2'/>`,
      `  <backingStore type='file' index='2'>`,
      `    <source file='/v/mid.qcow2'/>`,
      `    <backingStore type='file' index='1'>`,
      `      <source file='/v/base.qcow2'/>`,
      `      <backingStore/>`,
      `    </backingStore>`,
      `  </backingStore>`,
      `  <target dev='vda'/>`,
      `</disk>`,
      `<disk type='file' device='disk'>`,
      `  <source file='/v/other.qcow2'/>`,
      `  <backingStore type='file' index='5'/>`,
      `  <target dev='vdb'/>`,
      `</disk>`,
      '',
    ].join('\n');
    expect(stripBackingStores(xml)).toBe(
      [
        `<disk type='file' device='disk'>`,
        `  <source file='/v/top.qcow2'/>`,
        `  <target dev='vda'/>`,
        `</disk>`,
        `<disk type='file' device='disk'>`,
        `  <source file='/v/other.qcow2'/>`,
        `  <target dev='vdb'/>`,
        `</disk>`,
        '',
      ].join('\n'),
    );
  });

  it('throws on an unbalanced <backingStore>', () => {
    expect(() => stripBackingStores(`<disk><backingStore type='file'><source file='/x'/></disk>`)).toThrow(/unbalanced <backingStore>/);
  });
});

describe('parseDomState', () => {
  it('reads the captured virsh domstate outputs', () => {
    expect(parseDomState(fixture('domstate-running.txt'))).toBe('running');
    expect(parseDomState(fixture('domstate-shutoff.txt'))).toBe('shut off');
    // "error: failed to get domain" (captured stderr for a missing domain) is no state.
    expect(parseDomState(fixture('domstate-missing.txt'))).toBe('other');
  });

  it.each(['running', 'paused', 'shut off', 'shutdown', 'crashed', 'pmsuspended', 'blocked', 'idle', 'in shutdown'])('knows %s', (s) => {
    expect(parseDomState(`${s}\n\n`)).toBe(s);
    expect(parseDomState(`  ${s}  \r\n`)).toBe(s);
  });

  it.each(['', '\n', 'Running', 'shutoff', 'running paused', 'garbage\nrunning', 'shut  off', 'dominfo: exp1'])('maps %j to other', (s) => {
    expect(parseDomState(s)).toBe('other');
  });

  it('uses only the first line', () => {
    expect(parseDomState('paused\nrunning\n')).toBe('paused');
  });
});

describe('parseBlockJobInfo', () => {
  it('reads the job type and progress virsh prints (on stderr), and no job', async () => {
    const { parseBlockJobInfo } = await import('../../src/hypervisor/Virsh.js');
    expect(parseBlockJobInfo('\nActive Block Commit: [100 %]')).toEqual({ type: 'Active Block Commit', percent: 100 });
    expect(parseBlockJobInfo('Block Pull: [ 45 %]\n')).toEqual({ type: 'Block Pull', percent: 45 });
    expect(parseBlockJobInfo('No current block job for vda\n')).toBeUndefined();
    expect(parseBlockJobInfo('')).toBeUndefined();
  });
});
