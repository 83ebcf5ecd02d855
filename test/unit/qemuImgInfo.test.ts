import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseQemuImgInfo } from '../../src/hypervisor/qemuImgInfo.js';

/** Real `qemu-img info --output=json` output captured from QEMU 7.2 (see test/fixtures). */
function fixture(name: string): string {
  return readFileSync(new URL(`../fixtures/${name}`, import.meta.url), 'utf8');
}

describe('parseQemuImgInfo on captured output', () => {
  it('reads an overlay with its absolute backing file and format', () => {
    expect(parseQemuImgInfo(fixture('qemu-img-info-overlay.json'))).toEqual({
      format: 'qcow2',
      virtualSize: 67_108_864,
      actualSize: 200_704,
      backingFile: '/tmp/exp/retain/d2.qcow2',
      backingFormat: 'qcow2',
      backingName: '/tmp/exp/retain/d2.qcow2',
    });
  });

  it('reads a plain image without backing', () => {
    expect(parseQemuImgInfo(fixture('qemu-img-info-plain.json'))).toEqual({
      format: 'qcow2',
      virtualSize: 67_108_864,
      actualSize: 1_069_056,
      backingFile: undefined,
      backingFormat: undefined,
    });
  });
});

describe('parseQemuImgInfo on edited output', () => {
  const overlay = JSON.parse(fixture('qemu-img-info-overlay.json')) as Record<string, unknown>;

  it('prefers full-backing-filename (as qemu resolved it) over backing-filename (as written in the header), and keeps the header\'s as backingName', () => {
    const o = { ...overlay, 'backing-filename': 'd2.qcow2', 'full-backing-filename': '/var/virtualization/retain/d2.qcow2' };
    expect(parseQemuImgInfo(JSON.stringify(o)).backingFile).toBe('/var/virtualization/retain/d2.qcow2');
    expect(parseQemuImgInfo(JSON.stringify(o)).backingName).toBe('d2.qcow2');
  });

  it('falls back to backing-filename when full-backing-filename is missing', () => {
    const o: Record<string, unknown> = { ...overlay, 'backing-filename': '/v/base.qcow2' };
    delete o['full-backing-filename'];
    expect(parseQemuImgInfo(JSON.stringify(o)).backingFile).toBe('/v/base.qcow2');
  });

  it('leaves actual-size undefined when qemu does not report it', () => {
    const o: Record<string, unknown> = { ...overlay };
    delete o['actual-size'];
    expect(parseQemuImgInfo(JSON.stringify(o))).toEqual({
      format: 'qcow2',
      virtualSize: 67_108_864,
      actualSize: undefined,
      backingFile: '/tmp/exp/retain/d2.qcow2',
      backingFormat: 'qcow2',
      backingName: '/tmp/exp/retain/d2.qcow2',
    });
  });

  it('reads a raw image', () => {
    expect(parseQemuImgInfo('{"virtual-size": 1048576, "filename": "x.raw", "format": "raw", "actual-size": 4096}')).toEqual({
      format: 'raw',
      virtualSize: 1_048_576,
      actualSize: 4096,
      backingFile: undefined,
      backingFormat: undefined,
    });
  });

  it('ignores backing fields of the wrong type', () => {
    const o = { ...overlay, 'full-backing-filename': 42, 'backing-filename': null, 'backing-filename-format': false };
    const info = parseQemuImgInfo(JSON.stringify(o));
    expect(info.backingFile).toBeUndefined();
    expect(info.backingFormat).toBeUndefined();
  });
});

describe('parseQemuImgInfo refuses what it cannot use', () => {
  it.each([
    ['empty output', ''],
    ['truncated JSON', fixture('qemu-img-info-plain.json').slice(0, 80)],
    ['an error text', "qemu-img: Could not open 'x.qcow2': Could not open 'x.qcow2': No such file or directory"],
  ])('throws on %s (malformed JSON)', (_what, text) => {
    expect(() => parseQemuImgInfo(text)).toThrow(SyntaxError);
  });

  it.each([
    ['missing format', { 'virtual-size': 1024 }],
    ['missing virtual-size', { format: 'qcow2' }],
    ['format not a string', { format: 1, 'virtual-size': 1024 }],
    ['virtual-size as a string', { format: 'qcow2', 'virtual-size': '1024' }],
    ['an empty object', {}],
    ['an array (qemu-img info --backing-chain)', [{ format: 'qcow2', 'virtual-size': 1024 }]],
  ])('throws on %s', (_what, value) => {
    expect(() => parseQemuImgInfo(JSON.stringify(value))).toThrow('qemu-img info: unexpected output');
  });

  it.each(['null', '42', '"qcow2"'])('throws on the JSON value %s', (text) => {
    expect(() => parseQemuImgInfo(text)).toThrow();
  });
});

describe('parseQemuImgInfo with persistent bitmaps', () => {
  it('reads each bitmap\'s name, flags and granularity', () => {
    expect(parseQemuImgInfo(fixture('qemu-img-info-bitmaps.json')).bitmaps).toEqual([
      { name: 'stoney-20261130T010000Z', flags: ['auto'], granularity: 65536 },
      { name: 'other', flags: [], granularity: 65536 },
    ]);
  });

  it('skips malformed bitmap entries', () => {
    const o = JSON.parse(fixture('qemu-img-info-bitmaps.json')) as { 'format-specific': { data: Record<string, unknown> } };
    o['format-specific'].data['bitmaps'] = [{ name: 7, flags: [], granularity: 1 }, { name: 'ok', flags: ['auto', 3], granularity: 4096 }, null];
    expect(parseQemuImgInfo(JSON.stringify(o)).bitmaps).toEqual([{ name: 'ok', flags: ['auto'], granularity: 4096 }]);
  });
});
