import { describe, expect, it } from 'vitest';
import { foldsForRemoval, parseChainLink, planImageBase, relativeBackingPath, walkChain, type Iteration } from '../../src/domain/backupChain.js';

const GiB = 1024 ** 3;
const L1 = '20261101T010000Z';
const L2 = '20261102T010000Z';
const L3 = '20261103T010000Z';
const NOW = '20261104T010000Z';

function full(leaf: string, over: Partial<Iteration['images'][number]> = {}): Iteration {
  return { leaf, images: [{ name: `d.qcow2.${leaf}`, size: 100, virtualSize: 2 * GiB, intact: true, ...over }] };
}
function inc(leaf: string, base: string, over: Partial<Iteration['images'][number]> = {}): Iteration {
  return { leaf, images: [{ name: `d.qcow2.${leaf}`, size: 10, virtualSize: 2 * GiB, intact: true, backing: { leaf: base, name: `d.qcow2.${base}` }, ...over }] };
}
const source = { format: 'qcow2', hasBacking: false, virtualSize: 2 * GiB };
const plan = (iterations: Iteration[], over: Partial<Parameters<typeof planImageBase>[0]> = {}) =>
  planImageBase({ fileName: `d.qcow2.${NOW}`, imageFileName: 'd.qcow2', leaf: NOW, fullEvery: 7, source, iterations, ...over });

describe('planImageBase', () => {
  it('builds on the newest earlier finished backup, counting the incremental images since the last full one', () => {
    expect(plan([full(L1)])).toEqual({ kind: 'incremental', base: { leaf: L1, name: `d.qcow2.${L1}` }, depth: 1, reason: `changes since ${L1}` });
    expect(plan([full(L1), inc(L2, L1), inc(L3, L2)])).toMatchObject({ kind: 'incremental', base: { leaf: L3 }, depth: 3 });
  });

  it('ignores iterations dated after the backup being written', () => {
    expect(plan([full(L1), full('20261201T010000Z')])).toMatchObject({ kind: 'incremental', base: { leaf: L1 } });
  });

  it('makes every fullEvery-th backup full', () => {
    expect(plan([full(L1), inc(L2, L1), inc(L3, L2)], { fullEvery: 3 })).toEqual({ kind: 'full', reason: 'every 3th backup is full (sstBackupFullEvery); 2 incremental since the last full one' });
    expect(plan([full(L1), inc(L2, L1)], { fullEvery: 3 })).toMatchObject({ kind: 'incremental', depth: 2 });
    expect(plan([full(L1)], { fullEvery: 2 })).toMatchObject({ kind: 'incremental', depth: 1 });
    expect(plan([full(L1), inc(L2, L1)], { fullEvery: 2 })).toMatchObject({ kind: 'full' });
    expect(plan([full(L1)], { fullEvery: 1 })).toEqual({ kind: 'full', reason: 'sstBackupFullEvery is 1: every backup is full' });
  });

  it('is full, with the reason, whenever the previous image cannot serve as a base', () => {
    expect(plan([])).toEqual({ kind: 'full', reason: 'no earlier finished backup of the VM' });
    expect(plan([full(L1)], { source: { ...source, format: 'raw' } }).kind).toBe('full');
    expect(plan([full(L1)], { source: { ...source, hasBacking: true } })).toMatchObject({ kind: 'full', reason: expect.stringMatching(/linked clone/) });
    expect(plan([full(L1)], { imageFileName: 'other.qcow2' })).toMatchObject({ kind: 'full', reason: `the disk is not in the previous backup ${L1}` });
    expect(plan([full(L1, { format: 'raw' })])).toMatchObject({ kind: 'full', reason: `the previous backup ${L1} stored the disk as raw` });
    expect(plan([full(L1, { format: 'qcow2' })])).toMatchObject({ kind: 'incremental' });
    expect(plan([full(L1, { virtualSize: undefined })])).toMatchObject({ kind: 'full', reason: expect.stringMatching(/records no disk size/) });
    expect(plan([full(L1, { virtualSize: GiB })])).toMatchObject({ kind: 'full', reason: expect.stringMatching(/resized since .*1073741824 → 2147483648/) });
    expect(plan([full(L1, { intact: false }), inc(L2, L1)])).toMatchObject({ kind: 'full', reason: expect.stringMatching(/chain is broken: .*missing or not the size/) });
    expect(plan([inc(L2, L1)])).toMatchObject({ kind: 'full', reason: expect.stringMatching(/chain is broken: .* not in a finished backup/) });
  });
});

describe('walkChain', () => {
  it('lists the incremental images down to the full one', () => {
    const its = [full(L1), inc(L2, L1), inc(L3, L2)];
    expect(walkChain(its, { leaf: L3, name: `d.qcow2.${L3}` })).toEqual({
      ok: true,
      root: { leaf: L1, name: `d.qcow2.${L1}` },
      links: [{ leaf: L3, name: `d.qcow2.${L3}` }, { leaf: L2, name: `d.qcow2.${L2}` }],
    });
  });

  it('refuses a link forward in time (and so any loop)', () => {
    const its = [inc(L1, L2), inc(L2, L1)];
    expect(walkChain(its, { leaf: L2, name: `d.qcow2.${L2}` })).toMatchObject({ ok: false, problem: expect.stringMatching(/later backup/) });
  });
});

describe('foldsForRemoval', () => {
  it('folds the one dependent image into the removed one', () => {
    expect(foldsForRemoval([full(L1), inc(L2, L1), inc(L3, L2)], L1)).toEqual({
      folds: [{ child: { leaf: L2, name: `d.qcow2.${L2}` }, parent: { leaf: L1, name: `d.qcow2.${L1}` } }],
      blocked: [],
    });
    expect(foldsForRemoval([full(L1), full(L2)], L1)).toEqual({ folds: [], blocked: [] });
  });

  it('blocks removal of an image two iterations depend on', () => {
    expect(foldsForRemoval([full(L1), inc(L2, L1), inc(L3, L1)], L1)).toEqual({ folds: [], blocked: [{ leaf: L1, name: `d.qcow2.${L1}` }] });
  });
});

describe('parseChainLink and relativeBackingPath', () => {
  it('accepts only a leaf and a file name of that leaf', () => {
    expect(parseChainLink({ leaf: L1, name: `d.qcow2.${L1}` })).toEqual({ leaf: L1, name: `d.qcow2.${L1}` });
    for (const bad of [null, 'x', { leaf: L1 }, { leaf: '../x', name: 'a' }, { leaf: L1, name: `../d.qcow2.${L1}` }, { leaf: L1, name: `d.qcow2.${L2}` }]) {
      expect(parseChainLink(bad)).toBeUndefined();
    }
    expect(relativeBackingPath({ leaf: L1, name: `d.qcow2.${L1}` })).toBe(`../${L1}/d.qcow2.${L1}`);
  });
});
