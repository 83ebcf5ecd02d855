/** What one progress report of a copy tells, once measured against the ones before it. */
export interface CopyFigures {
  /** bytes this report adds to what the step has copied so far */
  newBytes: number;
  /** over the sliding window; undefined until two reports of the copy lie apart in time */
  bytesPerSecond: number | undefined;
  /** seconds until the copy in progress reaches its total at that rate (0 once it has) */
  etaSeconds: number | undefined;
}

/** Long enough to smooth the 64 MiB steps of sparseCopy's reports, short enough to show a copy slowing down. */
export const RATE_WINDOW_MS = 20_000;

/**
 * Throughput and time left of the copies one step makes, one after the
 * other, from their progress reports ({done, total} of the copy in progress,
 * as sparseCopy gives them: one at its start, then every 64 MiB and at the
 * end).
 *
 * The rate is taken over the last `windowMs` only, not since the start, so a
 * copy that slows down (page cache full, another VM's copy starting) shows
 * it within that window. A report whose `done` falls back or whose `total`
 * changes, or any report after one that reached its total, starts a new
 * copy: that first report is its start, adding no bytes (a caller may count
 * on from earlier files, as retain does), and the window starts afresh,
 * since the pause between two copies (a block commit, a qemu-img check) is
 * no copying. Reports that go on counting across files (retain's one total
 * for all its files) are one copy.
 */
export class CopyRate {
  private last: { done: number; total: number } | undefined;
  /** (time, bytes done) of the copy in progress; the first is the base the rate is measured from */
  private samples: { atMs: number; done: number }[] = [];

  constructor(private readonly windowMs = RATE_WINDOW_MS) {}

  report(done: number, total: number, atMs: number): CopyFigures {
    const prev = this.last;
    const newCopy = prev === undefined || done < prev.done || total !== prev.total || prev.done >= prev.total;
    const newBytes = newCopy ? 0 : done - prev.done;
    this.last = { done, total };
    if (newCopy) this.samples = [];
    this.samples.push({ atMs, done });
    // Keep the newest sample at or before the window's start as the base: the rate spans the whole window.
    while (this.samples.length > 2 && (this.samples[1] as { atMs: number }).atMs <= atMs - this.windowMs) this.samples.shift();
    const base = this.samples[0] as { atMs: number; done: number };
    const seconds = (atMs - base.atMs) / 1000;
    const bytesPerSecond = seconds > 0 ? (done - base.done) / seconds : undefined;
    const left = Math.max(0, total - done);
    const etaSeconds = left === 0 ? 0 : bytesPerSecond !== undefined && bytesPerSecond > 0 ? left / bytesPerSecond : undefined;
    return { newBytes, bytesPerSecond, etaSeconds };
  }
}

/** 312.4 MB/s, 12.0 MB/s, 512 kB/s: decimal units, as disk and network speeds are quoted. */
export function formatRate(bytesPerSecond: number): string {
  if (bytesPerSecond >= 1e9) return `${(bytesPerSecond / 1e9).toFixed(2)} GB/s`;
  if (bytesPerSecond >= 1e6) return `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;
  return `${Math.round(bytesPerSecond / 1e3)} kB/s`;
}

/** 0:42, 12:05, 1:02:09 — a clock-like time left that keeps its width while it counts down. */
export function formatEta(seconds: number): string {
  const s = Math.ceil(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}
