import { describe, expect, it } from 'vitest';
import { judgeProgress, type JobSample, type ProgressVerdict, type ProgressWatch } from '../../src/hypervisor/jobProgress.js';
import { parseDomainJobStats } from '../../src/hypervisor/Virsh.js';

/** Feed a scripted sequence of (time, sample) through the judge, as a watcher would. */
function run(samples: [number, JobSample][], stallMs: number): ProgressVerdict[] {
  let watch: ProgressWatch | undefined;
  return samples.map(([t, s]) => {
    const r = judgeProgress(watch, s, t, stallMs);
    watch = r.watch;
    return r.verdict;
  });
}

const MIN = 60_000;
const at = (progress: number): JobSample => ({ active: true, progress });

describe('judgeProgress', () => {
  it('never stops a job that keeps moving, however long it runs (a 10 h save)', () => {
    const samples: [number, JobSample][] = Array.from({ length: 601 }, (_, i) => [i * MIN, at(i * 1e9)]);
    expect(new Set(run(samples, 10 * MIN))).toEqual(new Set(['progressing']));
  });

  it('calls a job stalled only after more than the stall time without any change', () => {
    expect(run([[0, at(5)], [5 * MIN, at(5)], [10 * MIN, at(5)], [10 * MIN + 1, at(5)]], 10 * MIN)).toEqual(['progressing', 'progressing', 'progressing', 'stalled']);
  });

  it('starts the stall time anew at each change', () => {
    expect(run([[0, at(1)], [9 * MIN, at(1)], [10 * MIN, at(2)], [19 * MIN, at(2)], [20 * MIN + 1, at(2)]], 10 * MIN)).toEqual(['progressing', 'progressing', 'progressing', 'progressing', 'stalled']);
  });

  it('says ended when libvirt runs the job no more, and starts afresh for the next job', () => {
    expect(run([[0, at(7)], [11 * MIN, { active: false }], [30 * MIN, at(7)], [35 * MIN, at(7)]], 10 * MIN)).toEqual(['progressing', 'ended', 'progressing', 'progressing']);
  });

  it('counts a job that reports no counter at all as stalled after the stall time', () => {
    expect(run([[0, { active: true }], [11 * MIN, { active: true }]], 10 * MIN)).toEqual(['progressing', 'stalled']);
  });
});

describe('parseDomainJobStats', () => {
  // Captured from `virsh domjobinfo --rawstats` (libvirt 9.0) during, after and without a save.
  const during = 'Job type: 2\n\noperation: 2\ntime_elapsed: 268\ndowntime: 300\nsetup_time: 6\ndata_total: 537264128\ndata_processed: 178269204\ndata_remaining: 342740992\nmemory_total: 537264128\n';
  const cancelled = 'Job type: 5\n\noperation: 2\ntime_elapsed: 0\ndata_total: 0\ndata_processed: 0\n';
  it('reads a running job and its bytes processed', () => {
    expect(parseDomainJobStats(during)).toEqual({ active: true, progress: 178269204 });
  });
  it('reads no job as not running', () => {
    expect(parseDomainJobStats('Job type: 0\n\n')).toEqual({ active: false });
    expect(parseDomainJobStats('Job type:         None        \n')).toEqual({ active: false });
  });
  it('reads a completed, failed or cancelled job that libvirt still shows as running: it is still finishing (a save writes on)', () => {
    expect(parseDomainJobStats(during.replace('Job type: 2', 'Job type: 3'))).toEqual({ active: true, progress: 178269204 });
    expect(parseDomainJobStats(during.replace('Job type: 2', 'Job type: 4'))).toEqual({ active: true, progress: 178269204 });
    expect(parseDomainJobStats(cancelled)).toEqual({ active: true, progress: 0 });
  });
});
