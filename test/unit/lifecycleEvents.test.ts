import { describe, expect, it } from 'vitest';
import { parseLifecycleEvents, stoppedWindowMs } from '../../src/hypervisor/lifecycleEvents.js';

// Captured from `virsh event --loop --timestamp --event lifecycle` (libvirt 9.0): a live snapshot, then a save + restore.
const live = `2026-11-29 21:53:16.554+0000: event 'lifecycle' for domain 'probe1': Suspended Paused
2026-11-29 21:53:16.591+0000: event 'lifecycle' for domain 'probe1': Resumed Unpaused
`;
const saveRestore = `2026-11-29 22:10:01.100+0000: event 'lifecycle' for domain 'vm': Suspended Paused
2026-11-29 22:10:02.900+0000: event 'lifecycle' for domain 'vm': Stopped Saved
2026-11-29 22:10:03.200+0000: event 'lifecycle' for domain 'vm': Started Restored
2026-11-29 22:10:03.350+0000: event 'lifecycle' for domain 'vm': Resumed Unpaused
`;

describe('lifecycle events', () => {
  it('parses timestamps to the millisecond and classifies stops and starts', () => {
    const e = parseLifecycleEvents(live);
    expect(e.map((x) => [x.atMs, x.kind])).toEqual([
      [Date.UTC(2026, 10, 29, 21, 53, 16, 554), 'stop'],
      [Date.UTC(2026, 10, 29, 21, 53, 16, 591), 'start'],
    ]);
  });

  it('measures the stopped window from the first stop to the next start', () => {
    expect(stoppedWindowMs(parseLifecycleEvents(live), 0)).toBe(37);
    // Suspended → Stopped → Started (still paused) → Resumed is one window.
    expect(stoppedWindowMs(parseLifecycleEvents(saveRestore), 0)).toBe(2250);
    // Two pauses are two windows.
    expect(stoppedWindowMs(parseLifecycleEvents(live + live.replaceAll('21:53:16', '21:53:20')), 0)).toBe(74);
  });

  it('counts a stop without a start until the end of the watch, and ignores other lines', () => {
    const e = parseLifecycleEvents(`noise\n2026-11-29 21:53:16.554+0000: event 'lifecycle' for domain 'x': Suspended Paused\n`);
    expect(stoppedWindowMs(e, Date.UTC(2026, 10, 29, 21, 53, 17, 0))).toBe(446);
    expect(stoppedWindowMs([], 123)).toBe(0);
  });

  it('honours the zone offset', () => {
    const [e] = parseLifecycleEvents(`2026-11-29 22:53:16.554+0100: event 'lifecycle' for domain 'x': Resumed Unpaused`);
    expect(e?.atMs).toBe(Date.UTC(2026, 10, 29, 21, 53, 16, 554));
  });
});
