import { describe, expect, it } from 'vitest';
import { CopyRate, formatEta, formatRate } from '../../src/domain/copyRate.js';

const MB = 1e6;

describe('CopyRate', () => {
  it('has no rate at a copy\'s first report, then bytes over seconds, and the time left at that rate', () => {
    const r = new CopyRate();
    expect(r.report(0, 1000 * MB, 0)).toEqual({ newBytes: 0, bytesPerSecond: undefined, etaSeconds: undefined });
    const f = r.report(100 * MB, 1000 * MB, 1000);
    expect(f.newBytes).toBe(100 * MB);
    expect(f.bytesPerSecond).toBeCloseTo(100 * MB);
    expect(f.etaSeconds).toBeCloseTo(9);
    expect(r.report(1000 * MB, 1000 * MB, 9000)).toMatchObject({ newBytes: 900 * MB, etaSeconds: 0 });
  });

  it('measures over the sliding window, not since the start: a copy that slows down shows it', () => {
    const r = new CopyRate(10_000);
    r.report(0, 10_000 * MB, 0);
    // 200 MB/s for 30 s …
    for (let t = 1; t <= 30; t++) r.report(t * 200 * MB, 10_000 * MB, t * 1000);
    // … then 20 MB/s for 20 s
    let f = r.report(6000 * MB, 10_000 * MB, 30_000);
    for (let t = 31; t <= 50; t++) f = r.report(6000 * MB + (t - 30) * 20 * MB, 10_000 * MB, t * 1000);
    expect(f.bytesPerSecond).toBeCloseTo(20 * MB); // since the start it would be 128 MB/s
    expect(f.etaSeconds).toBeCloseTo((10_000 - 6400) / 20);
  });

  it('spans the whole window when reports are far apart (the base is the last report before it)', () => {
    const r = new CopyRate(10_000);
    r.report(0, 100 * MB, 0);
    const f = r.report(40 * MB, 100 * MB, 40_000);
    expect(f.bytesPerSecond).toBeCloseTo(1 * MB);
  });

  it('counts every byte once over copies one after another, and measures each copy on its own', () => {
    const r = new CopyRate();
    const sizes = [64 * MB, 64 * MB, 5, 200 * MB];
    let counted = 0;
    let t = 0;
    for (const size of sizes) {
      // a pause between copies (a block commit, a qemu-img check) is no copying
      t += 60_000;
      const start = r.report(0, size, t);
      expect(start.bytesPerSecond).toBeUndefined();
      counted += start.newBytes;
      for (let done = 64 * MB; done < size; done += 64 * MB) counted += r.report(done, size, (t += 100)).newBytes;
      const end = r.report(size, size, (t += 100));
      counted += end.newBytes;
      expect(end.etaSeconds).toBe(0);
      if (size === 64 * MB) expect(end.bytesPerSecond).toBeCloseTo(640 * MB);
    }
    expect(counted).toBe(sizes.reduce((a, b) => a + b, 0));
  });

  it('takes reports counting on across files (retain\'s one total) as one copy', () => {
    const r = new CopyRate();
    const total = 300 * MB;
    let counted = 0;
    // file 1: 100 MB, file 2: 200 MB, reported as before + done
    for (const [done, t] of [[0, 0], [64 * MB, 500], [100 * MB, 1000], [100 * MB, 1010], [164 * MB, 1500], [228 * MB, 2000], [300 * MB, 2500]] as const) {
      const f = r.report(done, total, t);
      counted += f.newBytes;
      if (t === 1010) expect(f.bytesPerSecond).toBeCloseTo((100 * MB) / 1.01);
    }
    expect(counted).toBe(total);
  });

  it('a copy that starts over (done falls back) is a new copy, its first report its start', () => {
    const r = new CopyRate();
    r.report(0, 500 * MB, 0);
    r.report(128 * MB, 500 * MB, 1000);
    expect(r.report(0, 500 * MB, 2000)).toEqual({ newBytes: 0, bytesPerSecond: undefined, etaSeconds: undefined });
    expect(r.report(64 * MB, 500 * MB, 3000).newBytes).toBe(64 * MB);
  });

  it('counts once when a copy of one file is followed by reports counting on across files', () => {
    // retain storing an image on its own ({done, total} of the image), then the small files as before + done of all
    const r = new CopyRate();
    const image = 128 * MB;
    const all = image + 3000 + 500;
    const reports: [number, number][] = [[0, image], [64 * MB, image], [image, image], [image, all], [image + 3000, all], [image + 3000, all], [all, all]];
    let counted = 0;
    reports.forEach(([done, total], i) => (counted += r.report(done, total, i * 100).newBytes));
    expect(counted).toBe(all);
  });
});

describe('formatRate and formatEta', () => {
  it('prints decimal units and a clock-like time left', () => {
    expect(formatRate(312.44 * MB)).toBe('312.4 MB/s');
    expect(formatRate(1.234e9)).toBe('1.23 GB/s');
    expect(formatRate(512_400)).toBe('512 kB/s');
    expect(formatEta(0.2)).toBe('0:01');
    expect(formatEta(65)).toBe('1:05');
    expect(formatEta(3729)).toBe('1:02:09');
  });
});
