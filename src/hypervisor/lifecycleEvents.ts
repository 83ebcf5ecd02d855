/**
 * The stopped window of a VM from libvirt's lifecycle events
 * (`virsh event --loop --timestamp --event lifecycle`), which is the only
 * honest measure: a command's wall time includes work done while the guest
 * runs (a live snapshot writes RAM for seconds and pauses for milliseconds).
 */
export interface LifecycleEvent {
  atMs: number;
  /** Suspended/Stopped stop the guest; Resumed/Started run it again. */
  kind: 'stop' | 'start' | 'other';
  text: string;
}

// 2026-11-29 21:53:16.554+0000: event 'lifecycle' for domain 'probe1': Suspended Paused
const LINE = /^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}\.\d{3})([+-]\d{4}): event 'lifecycle' for domain '[^']*': (\w+)(?: (.*))?$/;

export function parseLifecycleEvents(output: string): LifecycleEvent[] {
  const events: LifecycleEvent[] = [];
  for (const raw of output.split('\n')) {
    const m = LINE.exec(raw.trim());
    if (!m) continue;
    const [, date, time, zone, what] = m as unknown as [string, string, string, string, string];
    const atMs = Date.parse(`${date}T${time}${zone.slice(0, 3)}:${zone.slice(3)}`);
    const kind = what === 'Suspended' || what === 'Stopped' ? 'stop' : what === 'Resumed' || what === 'Started' ? 'start' : 'other';
    events.push({ atMs, kind, text: raw.trim() });
  }
  return events;
}

/**
 * Sum of the intervals from a stop to the start that lets the guest run again.
 * Consecutive starts belong to one window (`virsh restore` emits "Started
 * Restored" while the guest is still paused, then "Resumed"), as do
 * consecutive stops ("Suspended", then "Stopped Saved"). A window still open
 * at the end counts until `endMs` (the guest was stopped when we looked).
 */
export function stoppedWindowMs(events: LifecycleEvent[], endMs: number): number {
  let total = 0;
  let stoppedAt: number | undefined;
  let startedAt: number | undefined;
  for (const e of events) {
    if (e.kind === 'stop') {
      if (stoppedAt !== undefined && startedAt !== undefined) {
        total += startedAt - stoppedAt;
        stoppedAt = undefined;
      }
      stoppedAt ??= e.atMs;
      startedAt = undefined;
    } else if (e.kind === 'start' && stoppedAt !== undefined) {
      startedAt = e.atMs;
    }
  }
  if (stoppedAt !== undefined) total += (startedAt ?? Math.max(stoppedAt, endMs)) - stoppedAt;
  return total;
}
