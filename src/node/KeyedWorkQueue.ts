/**
 * Work queue keyed like a controller's: a key queued twice runs once; keys
 * of the same group (one VM) never run at the same time; at most
 * `concurrency` run at once. A key queued while it runs runs again after.
 */
export class KeyedWorkQueue {
  private readonly pending = new Map<string, string>(); // key → group
  private readonly runningGroups = new Set<string>();
  private readonly rerun = new Map<string, string>();
  private readonly runningKeys = new Set<string>();
  private running = 0;
  private idleWaiters: (() => void)[] = [];
  private stopped = false;

  constructor(
    private readonly worker: (key: string) => Promise<void>,
    private readonly concurrency: number,
    private readonly onError: (key: string, err: unknown) => void,
  ) {}

  add(key: string, group: string): void {
    if (this.stopped) return;
    if (this.runningKeys.has(key)) this.rerun.set(key, group);
    else this.pending.set(key, group);
    this.pump();
  }

  private pump(): void {
    for (const [key, group] of this.pending) {
      if (this.running >= this.concurrency) return;
      if (this.runningGroups.has(group)) continue;
      this.pending.delete(key);
      this.running += 1;
      this.runningGroups.add(group);
      this.runningKeys.add(key);
      void Promise.resolve()
        .then(() => this.worker(key))
        .catch((err: unknown) => {
          try {
            this.onError(key, err);
          } catch {
            // an error handler that throws must not stall the queue
          }
        })
        .finally(() => {
          this.running -= 1;
          this.runningGroups.delete(group);
          this.runningKeys.delete(key);
          const again = this.rerun.get(key);
          if (again !== undefined) {
            this.rerun.delete(key);
            if (!this.stopped) this.pending.set(key, again);
          }
          this.pump();
          if (this.running === 0 && this.pending.size === 0) this.idleWaiters.splice(0).forEach((r) => r());
        });
    }
  }

  /** Resolves when nothing runs or waits. */
  async idle(): Promise<void> {
    if (this.running === 0 && this.pending.size === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stop taking work; resolves when the running work has ended. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.pending.clear();
    this.rerun.clear();
    if (this.running > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }
}
