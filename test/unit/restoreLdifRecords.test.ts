import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { Entry } from 'ldapts';
import { entriesToLdif } from '../../src/directory/ldif.js';
import { attributeValues, formatLdif, parseLdif, withAttribute, type LdifEntry } from '../../src/domain/restore/ldifRecords.js';

const VMS = 'ou=virtual machines,ou=virtualization,ou=services,o=stepping-stone,c=ch';
const LONG_VM = `sstVirtualMachine=6a1b3c5e-0001-4e1f-9a51-3f0c2d7e8a01,${VMS}`;

describe('parseLdif reads what entriesToLdif writes', () => {
  it('keeps DNs, names, values, base64 and folded lines exactly', () => {
    // ldapts-like entries: string or string[] values, operational attributes included.
    const entries: Entry[] = [
      {
        dn: LONG_VM,
        sstVirtualMachine: '6a1b3c5e-0001-4e1f-9a51-3f0c2d7e8a01',
        objectClass: ['top', 'sstVirtualizationVirtualMachine'],
        description: 'Zürich machine: ü',
        entryCSN: '20240101000000.000000Z#000000#000#000000',
        sstMemory: '33554432',
      },
      {
        dn: `sstDisk=vda,ou=devices,${LONG_VM}`,
        objectClass: ['top', 'sstVirtualizationVirtualMachineDisk'],
        sstDisk: 'vda',
        description: [' leading space', 'trailing space ', ':colon first', '<angle'],
        sstSourceFile: `/var/virtualization/vm-persistent/0f83f084-8080-413e-b558-b678e504836e/${'x'.repeat(120)}.qcow2`,
        cn: '',
      },
    ];
    const text = entriesToLdif(entries, 'stoney-backup LDIF of 6a1b3c5e\nsecond header line');
    // The writer really folded and base64-encoded: the parser has to undo both.
    expect(text).toMatch(/^description:: /m);
    expect(text).toMatch(/\n [^\n]/);
    expect(text.startsWith('# stoney-backup LDIF of 6a1b3c5e\n# second header line\nversion: 1\n\n')).toBe(true);

    expect(parseLdif(text)).toEqual([
      {
        dn: LONG_VM,
        attributes: {
          objectClass: ['top', 'sstVirtualizationVirtualMachine'],
          sstVirtualMachine: ['6a1b3c5e-0001-4e1f-9a51-3f0c2d7e8a01'],
          description: ['Zürich machine: ü'],
          sstMemory: ['33554432'],
        },
      },
      {
        dn: `sstDisk=vda,ou=devices,${LONG_VM}`,
        attributes: {
          objectClass: ['top', 'sstVirtualizationVirtualMachineDisk'],
          sstDisk: ['vda'],
          description: [' leading space', 'trailing space ', ':colon first', '<angle'],
          sstSourceFile: [`/var/virtualization/vm-persistent/0f83f084-8080-413e-b558-b678e504836e/${'x'.repeat(120)}.qcow2`],
          cn: [''],
        },
      },
    ]);
  });

  it('reads a base64 DN and an empty file', () => {
    const dn = `sstDisk=vdä,ou=devices,${LONG_VM}`;
    const text = entriesToLdif([{ dn, objectClass: 'top' }]);
    expect(text).toMatch(/^dn:: /m);
    expect(parseLdif(text)).toEqual([{ dn, attributes: { objectClass: ['top'] } }]);
    expect(parseLdif('')).toEqual([]);
    expect(parseLdif(entriesToLdif([]))).toEqual([]);
  });
});

describe('formatLdif', () => {
  const entries: LdifEntry[] = [
    {
      dn: LONG_VM,
      attributes: {
        sstVirtualMachine: ['6a1b3c5e-0001-4e1f-9a51-3f0c2d7e8a01'],
        objectClass: ['top', 'sstVirtualizationVirtualMachine'],
        description: ['Zürich ü', ' x', 'a'.repeat(200)],
        cn: [''],
      },
    },
    { dn: `ou=devices,${LONG_VM}`, attributes: { objectClass: ['organizationalUnit'], ou: ['devices'] } },
  ];

  it('round-trips: parseLdif(formatLdif(x)) equals x', () => {
    expect(parseLdif(formatLdif(entries))).toEqual(entries);
    expect(parseLdif(formatLdif(entries, 'a header'))).toEqual(entries);
    expect(parseLdif(formatLdif([]))).toEqual([]);
  });

  it('writes byte for byte what entriesToLdif writes for the same entries', () => {
    const asLdapts: Entry[] = entries.map((e) => ({ dn: e.dn, ...e.attributes }));
    expect(formatLdif(entries, 'h')).toBe(entriesToLdif(asLdapts, 'h'));
  });
});

describe('parseLdif on hand-written LDIF', () => {
  it('skips comments (also folded ones), tolerates CRLF and several blank lines, gathers one attribute under its first spelling', () => {
    const text = [
      '# a comment',
      ' that continues',
      'version: 1',
      '',
      '',
      'dn: ou=devices,sstVirtualMachine=kvm-001,ou=virtual machines,o=x',
      'objectClass: organizationalUnit',
      '# inside a record',
      'ou:    devices',
      'OU: Devices',
      'description: folded val',
      ' ue',
      '',
      'dn: ou=x,o=x',
      'ou:',
    ].join('\r\n');
    const parsed = parseLdif(text);
    expect(parsed).toEqual([
      {
        dn: 'ou=devices,sstVirtualMachine=kvm-001,ou=virtual machines,o=x',
        attributes: { objectClass: ['organizationalUnit'], ou: ['devices', 'Devices'], description: ['folded value'] },
      },
      { dn: 'ou=x,o=x', attributes: { ou: [''] } },
    ]);
    const first = parsed[0];
    expect(first && attributeValues(first, 'OU')).toEqual(['devices', 'Devices']);
    expect(first && withAttribute(first, 'Ou', ['z']).attributes).toEqual({ objectClass: ['organizationalUnit'], ou: ['z'], description: ['folded value'] });
  });

  it('refuses malformed input naming the line', () => {
    expect(() => parseLdif('objectClass: top\n')).toThrow(/line 1: a record must start with "dn:"/);
    expect(() => parseLdif('dn: o=x\ncn:: not*base64\n')).toThrow(/line 2: invalid base64/);
    expect(() => parseLdif('\n continuation\n')).toThrow(/line 2: continuation line without a line to continue/);
    expect(() => parseLdif('dn: o=x\nchangetype: modify\n')).toThrow(/line 2: change records are not supported/);
    expect(() => parseLdif('dn: o=x\njpegPhoto:< file:///x\n')).toThrow(/line 2: URL values/);
    expect(() => parseLdif('dn: o=x\ncn: a\ndn: o=y\n')).toThrow(/line 3: second "dn:"/);
    expect(() => parseLdif('version: 2\n')).toThrow(/line 1: unsupported LDIF version/);
    expect(() => parseLdif('dn: o=x\nno colon here\n')).toThrow(/line 2: expected "name: value"/);
  });
});

describe('parseLdif on the project LDIF files', () => {
  const read = (name: string): string => readFileSync(new URL(`../../ldif/${name}`, import.meta.url), 'utf8');

  it('reads the sample tree, with kvm-001 memory and vCPUs', () => {
    const entries = parseLdif(read('sample-tree.ldif'));
    const kvm1 = entries.find((e) => e.dn === `sstVirtualMachine=kvm-001,${VMS}`);
    expect(kvm1 && [attributeValues(kvm1, 'sstMemory'), attributeValues(kvm1, 'sstVCPU')]).toEqual([['33554432'], ['1']]);
    const nic = entries.find((e) => e.dn.startsWith('sstInterface=net0,'));
    expect(nic?.attributes).toEqual({
      objectClass: ['top', 'sstVirtualizationVirtualMachineInterface'],
      sstInterface: ['net0'],
      sstMacAddress: ['52:54:00:3a:1b:02'],
      sstModelType: ['virtio'],
      sstSourceBridge: ['vmbr0'],
      sstType: ['bridge'],
    });
  });

  it('reads the schema (cn=config continuation lines)', () => {
    const [schema, ...rest] = parseLdif(read('stoney-original-schema.ldif'));
    expect(rest).toEqual([]);
    expect(schema?.dn).toBe('cn=sst,cn=schema,cn=config');
    expect(schema && attributeValues(schema, 'olcAttributeTypes').find((t) => t.includes("NAME 'sstMemory'"))).toBe(
      "( 1.3.6.1.4.1.22621.1.1.21 NAME 'sstMemory' DESC 'stoney cloud: memory of a virtual machine in bytes' EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )",
    );
  });
});
