import type { Logger } from 'pino';
import { errorMessage } from '../domain/errors.js';
import type { BackupDirectory } from '../directory/types.js';

/**
 * A sign of life for a long step. The control side fails a working mode that
 * stayed unchanged for STONEY_STEP_TIMEOUT_S; a copy of a large disk may
 * well take longer. While the step reports progress, its leaf is touched
 * (the working mode compare-and-swapped onto itself, state "0") at most once
 * per interval, so the leaf's modifyTimestamp shows the step moving. A step
 * that stops reporting progress (hung) stops the heartbeat too, and the
 * timeout then fails it as before. If the touch finds the leaf no longer in
 * the working mode, the step has lost its ownership (timed out, changed by a
 * human): `lost` says so and nothing more is written.
 */
export class StepHeartbeat {
  private progressed = false;
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> | undefined;
  lost = false;

  constructor(
    private readonly directory: BackupDirectory,
    private readonly leafDn: string,
    private readonly workingMode: string,
    private readonly intervalMs: number,
    private readonly log: Logger,
  ) {}

  start(): this {
    this.timer = setInterval(() => {
      this.beating ??= this.beat().finally(() => (this.beating = undefined));
    }, this.intervalMs);
    this.timer.unref();
    return this;
  }

  /** The step moved (a progress report). */
  noteProgress(): void {
    this.progressed = true;
  }

  /** Stop touching the leaf; waits for a touch in flight so that the step's report comes after it. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.beating;
  }

  private async beat(): Promise<void> {
    if (!this.progressed || this.lost) return;
    this.progressed = false;
    try {
      if (!(await this.directory.casMode(this.leafDn, this.workingMode, this.workingMode, { state: '0' }))) {
        this.lost = true;
        this.log.warn({ leafDn: this.leafDn, mode: this.workingMode }, 'the leaf left the working mode while the step runs (timed out or changed by hand); the step no longer owns it');
      }
    } catch (err) {
      this.log.warn({ leafDn: this.leafDn, err: errorMessage(err) }, 'heartbeat not written (directory unreachable?); trying again at the next one');
      this.progressed = true;
    }
  }
}
