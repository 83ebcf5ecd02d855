import { describe, expect, it } from 'vitest';
import { BackupMetrics } from '../../src/metrics/BackupMetrics.js';
import { meterProgress } from '../../src/node/meterProgress.js';
import type { StepProgress } from '../../src/node/StepContext.js';
import { progressPrinter, PROGRESS_LINE_EVERY_MS } from '../../src/cli/report.js';
import { parsePromText, sampleValue } from '../helpers/promText.js';

const MB = 1e6;

async function scrape(m: BackupMetrics) {
  return parsePromText((await m.render()).body).samples;
}

function clock() {
  let t = 0;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

function report(step: string, message: string, done?: number, total?: number): StepProgress {
  return { step, vm: 'vm1', leaf: '20261130T010000Z', message, ...(done === undefined ? {} : { done, total }) };
}

describe('meterProgress: a step\'s copies in the metrics and for the CLI', () => {
  it('counts the bytes of every copy of a step as they go, and shows its rate and time left while it runs', async () => {
    const m = new BackupMetrics({ daemon: 'node' });
    const c = clock();
    const seen: StepProgress[] = [];
    const merge = meterProgress('merge', (p) => seen.push(p), m, c.now);
    merge.onProgress(report('merge', 'pulling vda'));
    merge.onProgress(report('merge', 'keeping vda', 0, 400 * MB));
    c.advance(1000);
    merge.onProgress(report('merge', 'keeping vda', 100 * MB, 400 * MB));

    let s = await scrape(m);
    expect(sampleValue(s, 'stoney_backup_bytes_copied_total', { step: 'merge' })).toBe(100 * MB);
    expect(sampleValue(s, 'stoney_backup_copy_throughput_bytes_per_second', { step: 'merge' })).toBeCloseTo(100 * MB);
    expect(sampleValue(s, 'stoney_backup_copy_eta_seconds', { step: 'merge' })).toBeCloseTo(3);
    expect(sampleValue(s, 'stoney_backup_copy_throughput_bytes_per_second', { step: 'retain' })).toBe(0);
    // the CLI gets the same figures; a report without bytes passes as it came
    expect(seen[0]).toEqual(report('merge', 'pulling vda'));
    expect(seen[2]).toMatchObject({ done: 100 * MB, total: 400 * MB });
    expect(seen[2]!.bytesPerSecond).toBeCloseTo(100 * MB);
    expect(seen[2]!.etaSeconds).toBeCloseTo(3);

    c.advance(1000);
    merge.onProgress(report('merge', 'keeping vda', 400 * MB, 400 * MB));
    // a second disk of the same step: counted on top, not instead
    merge.onProgress(report('merge', 'keeping vdb', 0, 50 * MB));
    c.advance(500);
    merge.onProgress(report('merge', 'keeping vdb', 50 * MB, 50 * MB));
    merge.end();
    s = await scrape(m);
    expect(sampleValue(s, 'stoney_backup_bytes_copied_total', { step: 'merge' })).toBe(450 * MB);
    // none runs: time left 0, the throughput the last copy ended at
    expect(sampleValue(s, 'stoney_backup_copy_eta_seconds', { step: 'merge' })).toBe(0);
    expect(sampleValue(s, 'stoney_backup_copy_throughput_bytes_per_second', { step: 'merge' })).toBeCloseTo(100 * MB);
  });

  it('sums the throughput of copies of one step running at once (two VMs) and shows the longest time left', async () => {
    const m = new BackupMetrics({ daemon: 'node' });
    const c = clock();
    const a = meterProgress('retain', undefined, m, c.now);
    const b = meterProgress('retain', undefined, m, c.now);
    a.onProgress(report('retain', 'copying a', 0, 1000 * MB));
    b.onProgress(report('retain', 'copying b', 0, 100 * MB));
    c.advance(1000);
    a.onProgress(report('retain', 'copying a', 100 * MB, 1000 * MB));
    b.onProgress(report('retain', 'copying b', 50 * MB, 100 * MB));
    const s = await scrape(m);
    expect(sampleValue(s, 'stoney_backup_copy_throughput_bytes_per_second', { step: 'retain' })).toBeCloseTo(150 * MB);
    expect(sampleValue(s, 'stoney_backup_copy_eta_seconds', { step: 'retain' })).toBeCloseTo(9);
    expect(sampleValue(s, 'stoney_backup_bytes_copied_total', { step: 'retain' })).toBe(150 * MB);
    a.end();
    b.end();
  });
});

describe('progressPrinter', () => {
  it('prints a copy\'s percentage, throughput and time left, one line per update at most every few seconds', () => {
    const lines: string[] = [];
    const c = clock();
    const print = progressPrinter({ out: () => {}, err: (l) => lines.push(l) }, c.now);
    const p = (message: string, done?: number, extra: Partial<StepProgress> = {}) => print({ ...report('retain', message, done, done === undefined ? undefined : 1000 * MB), ...extra });
    p('copying disk');
    p('copying disk', 0);
    for (let i = 1; i < 100; i++) {
      c.advance(500);
      p('copying disk', i * 10 * MB, { bytesPerSecond: 20 * MB, etaSeconds: (1000 - i * 10) / 20 });
    }
    c.advance(500);
    p('copying disk', 1000 * MB, { bytesPerSecond: 20 * MB, etaSeconds: 0 });
    expect(lines[0]).toBe(`${'vm1'.padEnd(24)} 20261130T010000Z  retain: copying disk`);
    // 50 s of copying: a line every 5 s (the start came within 5 s of the message's first line), and the end
    expect(lines.length).toBe(1 + 50_000 / PROGRESS_LINE_EVERY_MS);
    expect(lines[1]).toMatch(/retain: copying disk 10% 20\.0 MB\/s ETA 0:45$/);
    expect(lines.at(-1)).toMatch(/retain: copying disk 100% 20\.0 MB\/s$/);
  });

  it('keeps its pace per VM: one VM\'s lines do not hold back another\'s', () => {
    const lines: string[] = [];
    const c = clock();
    const print = progressPrinter({ out: () => {}, err: (l) => lines.push(l) }, c.now);
    print({ ...report('retain', 'copying', 0, 100), vm: 'a' });
    print({ ...report('retain', 'copying', 0, 100), vm: 'b' });
    c.advance(1000);
    print({ ...report('retain', 'copying', 10, 100), vm: 'a' });
    expect(lines.map((l) => l.split(' ')[0])).toEqual(['a', 'b']);
  });
});
