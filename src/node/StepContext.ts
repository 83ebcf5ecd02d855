import type { Logger } from 'pino';
import type { BackupSettings } from '../domain/settings.js';
import type { BackupLayout } from '../domain/layout.js';
import type { BackupDirectory, VmEntry } from '../directory/types.js';
import type { Virsh } from '../hypervisor/Virsh.js';
import type { QemuImg } from '../hypervisor/QemuImg.js';

export interface StepProgress {
  step: string;
  vm: string;
  leaf: string;
  message: string;
  /** bytes of the copy in progress (a step's copies one after the other; retain counts across its files) */
  done?: number;
  total?: number;
  /** the copy's throughput over the last seconds and its time left (meterProgress adds them) */
  bytesPerSecond?: number;
  etaSeconds?: number;
}

/** What a node step needs: the VM, its settings and layout, and the adapters. */
export interface StepContext {
  vm: VmEntry;
  leaf: string;
  /** DN of the leaf the step works for (restore steps keep their request below it) */
  leafDn: string;
  settings: BackupSettings;
  layout: BackupLayout;
  directory: BackupDirectory;
  virsh: Virsh;
  qemuImg: QemuImg;
  /** Disks must live below one of these (absolute paths). */
  imageRoots: string[];
  logger: Logger;
  signal?: AbortSignal;
  onProgress?: (p: StepProgress) => void;
}

/** Seconds per phase, written to sstProvisioningExecutionTime. */
export interface StepResult {
  executionTime: Record<string, number>;
}

export function seconds(fromMs: number, toMs: number = performance.now()): number {
  return Math.round((toMs - fromMs) / 10) / 100;
}
