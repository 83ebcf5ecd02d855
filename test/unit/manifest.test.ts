import { describe, expect, it } from 'vitest';
import { parseManifest } from '../../src/node/backupIterations.js';

const L1 = '20261101T010000Z';
const L2 = '20261102T010000Z';
const sha = 'a'.repeat(64);
const manifest = (files: unknown[]) => JSON.stringify({ format: 'stoney-backup/1', vm: 'v', leaf: L2, vmType: 'vm-persistent', pool: 'p', createdAt: '', files });

describe('parseManifest (a manifest is untrusted input: backup directories are group-writable)', () => {
  it('reads the fields of whole and incremental images', () => {
    const m = parseManifest(manifest([
      { name: `d.qcow2.${L2}`, size: 10, sha256: sha, format: 'qcow2', virtualSize: 1024, backing: { leaf: L1, name: `d.qcow2.${L1}` } },
      { name: `e.qcow2.${L2}`, size: 20, sha256: sha, format: 'qcow2', virtualSize: 1024, fullReason: 'why' },
      { name: `v.state.${L2}`, size: 30, sha256: sha },
      { name: `w.state.${L2}`, size: 40, sha256PerMiB: sha },
    ]), L2);
    expect(m.files).toEqual([
      { name: `d.qcow2.${L2}`, size: 10, sha256: sha, format: 'qcow2', virtualSize: 1024, backing: { leaf: L1, name: `d.qcow2.${L1}` } },
      { name: `e.qcow2.${L2}`, size: 20, sha256: sha, format: 'qcow2', virtualSize: 1024, fullReason: 'why' },
      { name: `v.state.${L2}`, size: 30, sha256: sha },
      { name: `w.state.${L2}`, size: 40, sha256PerMiB: sha },
    ]);
  });

  it('refuses names outside the backup, backing links forward in time or out of the directory, odd formats and sizes', () => {
    const bad: unknown[] = [
      { name: `../x.${L2}`, size: 1, sha256: sha },
      { name: `d.qcow2.${L1}`, size: 1, sha256: sha },
      { name: `d.qcow2.${L2}`, size: -1, sha256: sha },
      { name: `d.qcow2.${L2}`, size: 1, sha256: 'zz' },
      { name: `d.qcow2.${L2}`, size: 1, sha256PerMiB: 'A'.repeat(64) },
      { name: `d.qcow2.${L2}`, size: 1 },
      // Two digests: one of them would go unchecked.
      { name: `d.qcow2.${L2}`, size: 1, sha256: sha, sha256PerMiB: sha },
      { name: `d.qcow2.${L2}`, size: 1, sha256: sha, format: 'vmdk' },
      { name: `d.qcow2.${L2}`, size: 1, sha256: sha, backing: { leaf: L2, name: `d.qcow2.${L2}` } },
      { name: `d.qcow2.${L2}`, size: 1, sha256: sha, backing: { leaf: '20271101T010000Z', name: 'd.qcow2.20271101T010000Z' } },
      { name: `d.qcow2.${L2}`, size: 1, sha256: sha, backing: { leaf: L1, name: '/etc/shadow' } },
      { name: `d.qcow2.${L2}`, size: 1, sha256: sha, backing: `../${L1}/d.qcow2.${L1}` },
    ];
    for (const f of bad) expect(() => parseManifest(manifest([f]), L2), JSON.stringify(f)).toThrow();
    expect(() => parseManifest(JSON.stringify({ format: 'other', files: [] }), L2)).toThrow(/unknown manifest format/);
  });
});
