import { CopyRate } from '../domain/copyRate.js';
import type { NodeStep } from '../domain/modes.js';
import type { BackupMetrics } from '../metrics/BackupMetrics.js';
import type { StepProgress } from './StepContext.js';

/**
 * One run of a node step, its progress reports measured: each report of a
 * copy ({done, total}) gets the copy's throughput and time left for whoever
 * prints it (the CLI), and the metrics count its bytes and show the same
 * figures. Bytes are counted as they are copied, so every step that copies
 * (retain, the merge's kept images, the snapshot's state file, a restore's
 * unretainLargeFiles) is counted without the step adding anything up.
 * `end()` when the step has ended.
 */
export function meterProgress(
  step: NodeStep,
  out: ((p: StepProgress) => void) | undefined,
  metrics: BackupMetrics | undefined,
  nowMs: () => number = () => performance.now(),
): { onProgress: (p: StepProgress) => void; end: () => void } {
  const rate = new CopyRate();
  const copying = metrics?.copying(step);
  return {
    onProgress: (p) => {
      if (p.done === undefined || p.total === undefined) {
        out?.(p);
        return;
      }
      const f = rate.report(p.done, p.total, nowMs());
      copying?.report(f);
      out?.({
        ...p,
        ...(f.bytesPerSecond !== undefined ? { bytesPerSecond: f.bytesPerSecond } : {}),
        ...(f.etaSeconds !== undefined ? { etaSeconds: f.etaSeconds } : {}),
      });
    },
    end: () => copying?.end(),
  };
}
