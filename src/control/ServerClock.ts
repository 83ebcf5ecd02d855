import { normalizeDn } from '../directory/ditPaths.js';

/** Samples kept: the median of the last ones is the offset (a late echo or a node's quick claim is an outlier). */
const SAMPLES = 21;

/**
 * The directory server's clock, as seen from this host. Every age the
 * control side judges (claim and step timeouts, the restore decision
 * timeout) is "now" minus a leaf's modifyTimestamp, which the server stamps:
 * "now" must be the server's too, or a host clock 5 minutes ahead fails
 * every command at once, and one behind never times anything out.
 *
 * Measured once at start (the control lease's look), then refined without
 * extra writes: for a mode this daemon wrote, the change
 * feed soon brings the entry back with the server's stamp of that write.
 * The stamp has whole seconds and was taken before the write's answer
 * arrived, so each sample is (stamp + 0.5 s) − (local time of the answer).
 */
export class ServerClock {
  private readonly pending = new Map<string, { mode: string; at: number }>();
  private readonly samples: number[] = [];
  private offset = 0;

  /** `initialOffsetMs`: a first measurement (the control lease's look reads the server's time). */
  constructor(private readonly localNowMs: () => number = Date.now, initialOffsetMs?: number) {
    if (initialOffsetMs !== undefined) {
      this.samples.push(initialOffsetMs);
      this.offset = initialOffsetMs;
    }
  }

  /** This daemon's write of `mode` on `dn` was answered just now. */
  wrote(dn: string, mode: string): void {
    if (this.pending.size >= 10_000) this.pending.clear(); // echoes that never came (entry deleted): forget them
    this.pending.set(normalizeDn(dn), { mode, at: this.localNowMs() });
  }

  /** The feed delivered `dn` with this mode and server stamp. Returns the new offset when it changed. */
  observed(dn: string, mode: string, serverStamp: Date | undefined): number | undefined {
    const key = normalizeDn(dn);
    const mine = this.pending.get(key);
    if (mine === undefined || serverStamp === undefined) return undefined;
    this.pending.delete(key);
    // Another writer's later state (a node's claim) carries its own time: not a sample of ours.
    if (mine.mode !== mode) return undefined;
    this.samples.push(serverStamp.getTime() + 500 - mine.at);
    if (this.samples.length > SAMPLES) this.samples.shift();
    const sorted = [...this.samples].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)]!;
    if (median === this.offset) return undefined;
    this.offset = median;
    return median;
  }

  /** Server time minus this host's time, ms (0 until the first sample). */
  get offsetMs(): number {
    return this.offset;
  }

  now(): Date {
    return new Date(this.localNowMs() + this.offset);
  }
}
