/**
 * The project against the ORIGINAL stoney cloud schema: a slapd whose
 * cn=config holds exactly ldif/stoney-original-schema.ldif (the original's
 * definitions of every name the project uses) plus ldif/stoney-backup-schema.ldif
 * (the project's extension), with the sample tree built as the original
 * installer's data. Everything the project writes must be accepted there, and
 * the extension must load into a running directory that has only the original.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Client } from 'ldapts';
import { EXTENSION_INCLUDE, LDIF_DIR, PROJECT_ROOT, ldapAddConfig, ldapModify, type PrivateSlapd } from '../helpers/slapd.js';
import { useSlapdWithDirectory } from '../helpers/useSlapd.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { BackupModes, PruneModes, RestoreModes } from '../../src/domain/modes.js';
import { parseLdif } from '../../src/domain/restore/ldifRecords.js';

const SERVICE = 'ou=virtualization,ou=services,o=stepping-stone,c=ch';
const VMS = `ou=virtual machines,${SERVICE}`;
const POOL_BACKUP = `ou=backup,sstVirtualMachinePool=0f83f084-8080-413e-b558-b678e504836e,ou=virtual machine pools,${SERVICE}`;
const ARC = '1.3.6.1.4.1.22621.1';

const readLdif = (name: string): string => readFileSync(path.join(LDIF_DIR, name), 'utf8');

/** name → definition (one line) of a cn=config schema file. */
function definitions(file: string): Map<string, string> {
  const [entry] = parseLdif(readLdif(file));
  const out = new Map<string, string>();
  for (const key of ['olcAttributeTypes', 'olcObjectClasses']) {
    for (const d of entry?.attributes[key] ?? []) out.set(/NAME '([^']+)'/.exec(d)![1]!, d.replace(/\s+/g, ' '));
  }
  return out;
}

/** The definitions slapd serves (cn=Subschema), by name. */
async function servedSchema(slapd: PrivateSlapd): Promise<Map<string, string>> {
  const client = new Client({ url: slapd.url });
  try {
    const { searchEntries } = await client.search('cn=Subschema', { scope: 'base', filter: '(objectClass=*)', attributes: ['attributeTypes', 'objectClasses'] });
    const e = searchEntries[0]!;
    const out = new Map<string, string>();
    for (const d of ([] as string[]).concat(e['attributeTypes'] as string[], e['objectClasses'] as string[])) {
      const name = /NAME (?:\( )?'([^']+)'/.exec(d)?.[1];
      if (name) out.set(name, d);
    }
    return out;
  } finally {
    await client.unbind();
  }
}

/** The parts of a definition that must agree with the original, normalised (DESC and order ignored). */
function essentials(d: string): Record<string, string | boolean> {
  const pick = (k: string) => new RegExp(`\\b${k} (\\( [^)]*\\)|\\S+)`).exec(d)?.[1]?.replace(/[()$\s]+/g, ' ').trim().toLowerCase().split(' ').sort().join(' ') ?? '';
  return {
    oid: /^\(\s*([\d.]+)/.exec(d)?.[1] ?? '',
    syntax: pick('SYNTAX'), equality: pick('EQUALITY'), substr: pick('SUBSTR'), must: pick('MUST'), may: pick('MAY'),
    kind: /\b(AUXILIARY|STRUCTURAL|ABSTRACT)\b/.exec(d)?.[1] ?? '',
    single: /\bSINGLE-VALUE\b/.test(d),
  };
}

/** Every sst… name the project's code uses. */
function sstNamesInSource(): Set<string> {
  const names = new Set<string>();
  const walk = (dir: string): void => {
    for (const n of readdirSync(dir)) {
      const p = path.join(dir, n);
      if (statSync(p).isDirectory()) walk(p);
      else if (n.endsWith('.ts')) for (const m of readFileSync(p, 'utf8').matchAll(/\bsst[A-Z][A-Za-z]+\b(?!\*)/g)) names.add(m[0]);
    }
  };
  walk(path.join(PROJECT_ROOT, 'src'));
  walk(path.join(PROJECT_ROOT, 'workflows'));
  return names;
}

const original = definitions('stoney-original-schema.ldif');
const extension = definitions('stoney-backup-schema.ldif');

describe('the two schema files', () => {
  it('pin the original\'s numbers and classes where issue 11 found the project\'s own inventions', () => {
    const oid = (name: string) => essentials(original.get(name) ?? '').oid;
    expect(Object.fromEntries(['sstVirtualMachine', 'sstMemory', 'sstVCPU', 'sstNode', 'sstProvisioningMode', 'sstCronActive', 'sstInterface', 'sstMacAddress'].map((n) => [n, oid(n)]))).toEqual({
      sstVirtualMachine: `${ARC}.1.62`, sstMemory: `${ARC}.1.21`, sstVCPU: `${ARC}.1.64`, sstNode: `${ARC}.1.68`,
      sstProvisioningMode: `${ARC}.1.16`, sstCronActive: `${ARC}.1.189`, sstInterface: `${ARC}.1.88`, sstMacAddress: `${ARC}.1.90`,
    });
    expect(Object.fromEntries(['sstProvisioning', 'sstVirtualizationNode', 'sstVirtualizationVirtualMachine', 'sstVirtualizationVirtualMachineDisk', 'sstVirtualizationVirtualMachineInterface', 'sstVirtualMachines', 'sstCronObjectClass', 'sstVirtualizationBackupObjectClass'].map((n) => [n, oid(n)]))).toEqual({
      sstProvisioning: `${ARC}.2.11`, sstVirtualizationNode: `${ARC}.2.21`, sstVirtualizationVirtualMachine: `${ARC}.2.26`,
      sstVirtualizationVirtualMachineDisk: `${ARC}.2.28`, sstVirtualizationVirtualMachineInterface: `${ARC}.2.29`, sstVirtualMachines: `${ARC}.2.37`,
      sstCronObjectClass: `${ARC}.2.57`, sstVirtualizationBackupObjectClass: `${ARC}.2.58`,
    });
    // The VM class is not narrowed: all 16 mandatory attributes of the original.
    expect(String(essentials(original.get('sstVirtualizationVirtualMachine')!).must).split(' ')).toHaveLength(16);
    expect(essentials(original.get('sstVirtualizationVirtualMachineDisk')!).must).toBe('sstdevice sstdisk sstsourcefile ssttargetbus ssttype');
    // IA5, multi-valued, case-insensitive: the original's sstVirtualMachine.
    expect(essentials(original.get('sstVirtualMachine')!)).toMatchObject({ syntax: '1.3.6.1.4.1.1466.115.121.1.26{64}', equality: 'caseignoreia5match', single: false });
    // File modes are INTEGERs (660, read as octal).
    expect(essentials(original.get('sstVirtualizationDiskImagePermission')!)).toMatchObject({ syntax: '1.3.6.1.4.1.1466.115.121.1.27{4}', equality: 'integermatch' });
  });

  it('the extension adds only new names, numbered outside the original\'s ranges', () => {
    expect([...extension.keys()].filter((n) => original.has(n))).toEqual([]);
    for (const [name, d] of extension) {
      const m = /^\( 1\.3\.6\.1\.4\.1\.22621\.1\.([12])\.(\d+) /.exec(d);
      expect(m, name).not.toBeNull();
      const [, arc, n] = m!;
      expect(Number(n), name).toBeGreaterThan(arc === '1' ? 227 : 64);
    }
    expect([...extension.keys()].sort()).toEqual(['sstBackupFullEvery', 'sstBackupLease', 'sstBackupLeaseHolder', 'sstBackupSettingsExtension', 'sstBackupSnapshotMethod']);
  });

  it('every sst… name the code uses is defined in one of them', () => {
    const undefinedNames = [...sstNamesInSource()].filter((n) => !original.has(n) && !extension.has(n));
    expect(undefinedNames).toEqual([]);
  });

  it('config.ldif loads both, the original first', () => {
    const config = readLdif('config.ldif');
    const first = config.indexOf('include: file://@LDIFDIR@/stoney-original-schema.ldif');
    expect(first).toBeGreaterThan(0);
    expect(config.indexOf(EXTENSION_INCLUDE)).toBeGreaterThan(first);
  });
});

describe('a slapd with exactly the original definitions plus the extension', () => {
  let slapd: PrivateSlapd;
  let dir: LdapBackupDirectory;
  useSlapdWithDirectory((s) => ({ slapd, dir } = s));

  it('serves every definition of both files unchanged', async () => {
    const served = await servedSchema(slapd);
    for (const [name, d] of [...original, ...extension]) expect(essentials(served.get(name) ?? ''), name).toEqual(essentials(d));
  });

  it('reads the original installer\'s settings: 660 and 770 as octal modes', async () => {
    await ldapModify(slapd, `dn: ${POOL_BACKUP}\nchangetype: modify\nreplace: sstVirtualizationDiskImageDirectoryPermission\nsstVirtualizationDiskImageDirectoryPermission: 770\n`);
    const s = (await dir.effectiveSettings((await dir.getVm('kvm-001'))!)).backup;
    expect({ image: s.image.mode.toString(8), directory: s.directory.mode.toString(8), source: s.sourceDn.toLowerCase() }).toEqual({ image: '660', directory: '770', source: POOL_BACKUP.toLowerCase() });
  });

  it('accepts every mode, state, return value and execution time the protocols write on a leaf', async () => {
    const leaf = '20140109T010000Z';
    expect(await dir.createLeaf('kvm-002', leaf)).toBe(true);
    const dn = (await dir.listLeaves('kvm-002'))[0]!.dn;
    const walk = [...BackupModes.slice(1), ...RestoreModes, 'finished', ...PruneModes];
    let from: string = 'initialize';
    for (const next of walk) {
      const extras = next.endsWith('ed') ? { state: '20140109T010203Z', returnValue: 0, executionTime: { [next]: 12.345 } } : { state: '0' };
      expect(await dir.casMode(dn, from, next, extras), `${from} → ${next}`).toBe(true);
      from = next;
    }
    expect(await dir.casMode(dn, 'deleted', 'deleted', { returnValue: 57 })).toBe(true);
    const l = (await dir.listLeaves('kvm-002'))[0]!;
    expect({ mode: l.mode, rv: l.returnValue, times: Object.keys(l.executionTime).sort() }).toEqual({
      mode: 'deleted', rv: 57, times: [...new Set(walk.filter((m) => m.endsWith('ed')))].sort(),
    });
    await dir.deleteLeaf(dn);
    expect(await dir.listLeaves('kvm-002')).toEqual([]);
  });

  it('accepts the restore request, the exclusion flag and a decided VM subtree', async () => {
    const leaf = '20140109T020000Z';
    expect(await dir.createLeaf('kvm-001', leaf)).toBe(true);
    const dn = (await dir.listLeaves('kvm-001')).find((l) => l.leaf === leaf)!.dn;
    expect(await dir.createRestoreRequest(dn, { target: 'kvm-001' })).toBe(true);
    await dir.putRestoreRequest(dn, { target: 'kvm-001', retain: '20140109T021000Z', decisions: { prefer: 'backup', overrides: {} } });
    await dir.deleteRestoreRequest(dn);
    await dir.setExcluded('kvm-001', true);
    expect((await dir.effectiveSettings((await dir.getVm('kvm-001'))!)).excluded).toBe(true);
    await dir.setExcluded('kvm-001', false);
    // A restore writes the VM's subtree back as decided: more memory, a cdrom added (with its image, as the original requires).
    const before = await dir.exportVmLdif('kvm-001');
    const entries = parseLdif(before);
    const vm = entries.find((e) => e.dn.startsWith('sstVirtualMachine='))!;
    const cdrom = { dn: `sstDisk=hdc,ou=devices,sstVirtualMachine=kvm-001,${VMS}`, attributes: { objectClass: ['top', 'sstVirtualizationVirtualMachineDisk'], sstDisk: ['hdc'], sstDevice: ['cdrom'], sstType: ['file'], sstSourceFile: ['/var/virtualization/iso/install.iso'], sstTargetBus: ['ide'], sstReadonly: ['TRUE'] } };
    await dir.writeVmSubtree('kvm-001', [...entries.map((e) => (e === vm ? { ...e, attributes: { ...e.attributes, sstMemory: ['67108864'] } } : e)), cdrom]);
    expect(await dir.exportVmLdif('kvm-001')).toMatch(/sstMemory: 67108864[\s\S]*dn: sstDisk=hdc,/);
    await dir.writeVmSubtree('kvm-001', entries);
    expect(parseLdif(await dir.exportVmLdif('kvm-001'))).toEqual(entries);
  });
});

describe('an existing installation: the original schema only, the extension loaded while it runs', () => {
  let slapd: PrivateSlapd;
  let dir: LdapBackupDirectory;
  useSlapdWithDirectory((s) => ({ slapd, dir } = s), { withoutExtension: true });

  it('holds the original tree without the extension; ldapadd of the extension adds its names, and the snapshot method is then read', async () => {
    expect((await servedSchema(slapd)).has('sstBackupSnapshotMethod')).toBe(false);
    expect((await dir.effectiveSettings((await dir.getVm('kvm-001'))!)).backup.snapshotMethod).toBe('live');
    await ldapAddConfig(slapd, readLdif('stoney-backup-schema.ldif'));
    const served = await servedSchema(slapd);
    for (const [name, d] of extension) expect(essentials(served.get(name) ?? ''), name).toEqual(essentials(d));
    await ldapModify(slapd, `dn: ${POOL_BACKUP}\nchangetype: modify\nadd: objectClass\nobjectClass: sstBackupSettingsExtension\n-\nadd: sstBackupSnapshotMethod\nsstBackupSnapshotMethod: save\n`);
    expect((await dir.effectiveSettings((await dir.getVm('kvm-001'))!)).backup.snapshotMethod).toBe('save');
  });

  it('refuses the original schema file a second time: the running directory has those definitions already', async () => {
    await expect(ldapAddConfig(slapd, readLdif('stoney-original-schema.ldif'))).rejects.toThrow(/Duplicate|already exists/i);
  });
});
