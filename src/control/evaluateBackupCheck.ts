import type { LeafEntry } from '../directory/types.js';
import { formatDuration } from '../domain/duration.js';
import { vmBackupHealth } from './backupHealth.js';

/** Monitoring-plugin states, with the exit codes Nagios, Icinga and Zabbix read. */
export const CheckState = { OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3 } as const;
export type CheckStateName = keyof typeof CheckState;

export interface CheckedVm {
  name: string;
  excluded: boolean;
  leaves: readonly LeafEntry[];
}

export interface CheckLimits {
  /** a VM needs a finished backup planned less than this long ago */
  maxAgeMs: number;
  /** a workflow planned longer ago than this and still running is late */
  maxRuntimeMs: number;
}

export interface VmCheckResult {
  vm: string;
  state: CheckStateName;
  /** why, in a few words (empty when OK) */
  reasons: string[];
  lastSuccess: string | null;
  lastFailure: string | null;
}

export interface CheckResult {
  state: CheckStateName;
  /** the plugin's one line: `STATE: summary | perfdata` */
  line: string;
  vms: VmCheckResult[];
}

const severity: Record<CheckStateName, number> = { OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3 };

/** The worst of the VMs' states decides; CRITICAL outranks UNKNOWN as a plugin's rule of thumb has it. */
function worst(a: CheckStateName, b: CheckStateName): CheckStateName {
  return severity[b] > severity[a] ? b : a;
}

/**
 * The check's verdict over the given VMs, as a pure function of their leaves
 * and the time: CRITICAL when a VM that is not excluded has no good backup
 * younger than maxAge or its newest backup failed; WARNING when a workflow
 * waits for a human (blocked) or runs past maxRuntime.
 */
export function evaluateBackupCheck(vms: readonly CheckedVm[], now: Date, limits: CheckLimits): CheckResult {
  const results: VmCheckResult[] = [];
  let state: CheckStateName = 'OK';
  let oldestSuccessAgeS = 0;
  let excluded = 0;
  for (const vm of vms) {
    if (vm.excluded) {
      excluded += 1;
      continue;
    }
    const h = vmBackupHealth(vm.leaves);
    const reasons: string[] = [];
    let s: CheckStateName = 'OK';
    if (h.lastSuccess === undefined) {
      reasons.push('never backed up');
      s = 'CRITICAL';
    } else {
      const age = now.getTime() - h.lastSuccess.getTime();
      oldestSuccessAgeS = Math.max(oldestSuccessAgeS, Math.round(age / 1000));
      if (age > limits.maxAgeMs) {
        reasons.push(`last good backup ${formatDuration(age)} ago`);
        s = 'CRITICAL';
      }
    }
    if (h.newestFailed) {
      reasons.push('newest backup failed');
      s = 'CRITICAL';
    }
    if (h.blocked.length > 0) {
      reasons.push(`workflow ${h.blocked.map((l) => `${l.leaf} (${l.mode}, ${l.returnValue ?? 0})`).join(', ')} waits for a human`);
      s = worst(s, 'WARNING');
    }
    for (const r of h.running) {
      const running = now.getTime() - r.plannedAt.getTime();
      if (running > limits.maxRuntimeMs) {
        reasons.push(`workflow ${r.leaf.leaf} (${r.leaf.mode}) runs for ${formatDuration(running)}`);
        s = worst(s, 'WARNING');
      }
    }
    state = worst(state, s);
    results.push({ vm: vm.name, state: s, reasons, lastSuccess: h.lastSuccess?.toISOString() ?? null, lastFailure: h.lastFailure?.toISOString() ?? null });
  }
  const count = (x: CheckStateName) => results.filter((r) => r.state === x).length;
  const bad = results.filter((r) => r.state !== 'OK');
  const summary = bad.length === 0
    ? `${results.length} VMs have a backup younger than ${formatDuration(limits.maxAgeMs)}${excluded ? ` (${excluded} excluded)` : ''}`
    : bad.map((r) => `${r.vm}: ${r.reasons.join('; ')}`).join(', ');
  const perfdata = [
    `vms=${results.length};;;0`,
    `critical=${count('CRITICAL')};;;0`,
    `warning=${count('WARNING')};;;0`,
    `excluded=${excluded};;;0`,
    `oldest_backup_age=${oldestSuccessAgeS}s;;${Math.round(limits.maxAgeMs / 1000)};0`,
  ].join(' ');
  return { state, line: `${state}: ${summary} | ${perfdata}`, vms: results };
}
