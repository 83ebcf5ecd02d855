/**
 * Long jobs inside libvirtd (a save, a live snapshot's memory dump, a block
 * pull or commit) run for as long as the data takes: hours for a large disk
 * at a limited bandwidth. They are watched by their progress, never by a wall
 * clock: a job that keeps moving is never stopped, one that has not moved for
 * STALL_MS is.
 */
export const STALL_MS = 10 * 60 * 1000;

/** One look at a job: whether libvirt still runs it, and how far it got (bytes, percent — any counter that moves while it works). */
export interface JobSample {
  active: boolean;
  progress?: number;
}

/** What the watcher remembers between samples. */
export interface ProgressWatch {
  progress: number | undefined;
  sinceMs: number;
}

export type ProgressVerdict = 'ended' | 'progressing' | 'stalled';

/**
 * The decision for one sample: `ended` when libvirt runs the job no more,
 * `stalled` when its counter has not changed for more than `stallMs`, else
 * `progressing`. Pure: the caller keeps `watch` (undefined before the first
 * sample of the job).
 */
export function judgeProgress(watch: ProgressWatch | undefined, sample: JobSample, nowMs: number, stallMs: number): { watch: ProgressWatch | undefined; verdict: ProgressVerdict } {
  if (!sample.active) return { watch: undefined, verdict: 'ended' };
  if (watch === undefined || sample.progress !== watch.progress) return { watch: { progress: sample.progress, sinceMs: nowMs }, verdict: 'progressing' };
  return { watch, verdict: nowMs - watch.sinceMs > stallMs ? 'stalled' : 'progressing' };
}

export type ProgressJudge = typeof judgeProgress;

/** Text for a stall, the same for every kind of job. */
export function stalledMessage(what: string, stallMs: number, progress: number | undefined): string {
  const span = stallMs >= 60_000 ? `${Math.round(stallMs / 60_000)} minutes` : `${stallMs} ms`;
  return `${what} made no progress for ${span} (stuck at ${progress ?? 'an unknown point'})`;
}
