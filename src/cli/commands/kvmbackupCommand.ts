import { backupSucceeded } from '../../../workflows/backupMachine.js';
import { formatLeafName } from '../../domain/leafName.js';
import { describeReturnCode } from '../../domain/returnCodes.js';
import { errorMessage } from '../../domain/errors.js';
import type { BackupLayout } from '../../domain/layout.js';
import { locateLayout } from '../../node/backupLocation.js';
import type { BackupDirectory, LeafEntry, VmEntry } from '../../directory/types.js';
import type { Virsh } from '../../hypervisor/Virsh.js';
import { listOption, type Command } from '../command.js';
import { requireNodeName } from '../config.js';
import { ExitCode, exitCodeHelp } from '../exitCodes.js';
import { CliError, Runtime } from '../runtime.js';
import { progressPrinter, summarize } from '../report.js';
import { driveBatch, runBatchAndReport } from '../runBatchCommand.js';
import { startLocalNode } from '../localNode.js';
import { leafActive } from '../../control/decideBatch.js';
import { interruptedBackups } from '../../control/interruptedBackups.js';


export interface PlannedVm {
  vm: string;
  backup: boolean;
  reason: string;
  retainDir?: string;
  backupDir?: string;
  settingsFrom?: string;
  replaces?: string[];
  /** skipped because the VM's last backup failed: the run must not look like a success (exit 6) */
  lastBackupFailed?: boolean;
}

/**
 * Which of this node's VMs kvmbackup backs up, and why the others are left
 * out (the original KVMBackup wrapper's rules). Reads only.
 */
export async function planKvmBackup(
  directory: BackupDirectory,
  virsh: Virsh,
  nodeName: string,
  leaf: string,
  opts: { include: string[]; exclude: string[]; force: boolean; imageRoots: readonly string[] },
): Promise<PlannedVm[]> {
  const vms = await directory.listVms({ node: nodeName });
  for (const name of opts.include) {
    if (!vms.some((v) => v.name === name)) throw new CliError(`--include ${name}: no such VM on node ${nodeName}`, ExitCode.notFound);
  }
  const plan: PlannedVm[] = [];
  for (const vm of vms.sort((a, b) => a.name.localeCompare(b.name))) {
    if (opts.include.length && !opts.include.includes(vm.name)) continue;
    if (opts.exclude.includes(vm.name)) {
      plan.push({ vm: vm.name, backup: false, reason: 'excluded by --exclude' });
      continue;
    }
    let settings;
    try {
      settings = await directory.effectiveSettings(vm);
    } catch (err) {
      plan.push({ vm: vm.name, backup: false, reason: `unusable backup settings: ${errorMessage(err)}` });
      continue;
    }
    if (settings.excluded) {
      plan.push({ vm: vm.name, backup: false, reason: 'excluded from backups (sstBackupExcludeFromBackup: TRUE)' });
      continue;
    }
    if (!(await virsh.domainExists(vm.name))) {
      plan.push({ vm: vm.name, backup: false, reason: `not defined in libvirt on this host (${virsh.uri})` });
      continue;
    }
    const leaves = await directory.listLeaves(vm.name);
    const last = leaves.filter((l) => l.leaf !== leaf).at(-1);
    const busy = leaves.find((l) => l.leaf !== leaf && leafActive(l));
    if (busy) {
      plan.push({ vm: vm.name, backup: false, reason: `a workflow is in progress on ${busy.leaf} (mode ${busy.mode}); not even --force replaces it` });
      continue;
    }
    const lastFailed = last !== undefined && !backupSucceeded(last);
    if (lastFailed && !opts.force) {
      plan.push({
        vm: vm.name,
        backup: false,
        lastBackupFailed: true,
        reason: `last backup ${last.leaf} did not finish (mode ${last.mode}, return value ${last.returnValue ?? '?'}: ${describeReturnCode(last.returnValue ?? 1)}); check the VM, then use --force`,
      });
      continue;
    }
    let layout: BackupLayout;
    try {
      layout = (await locateLayout(vm, leaf, settings.backup, opts.imageRoots)).layout;
    } catch (err) {
      plan.push({ vm: vm.name, backup: false, reason: errorMessage(err) });
      continue;
    }
    plan.push({
      vm: vm.name,
      backup: true,
      reason: lastFailed ? `last backup ${last?.leaf} failed; forced` : 'due',
      retainDir: layout.retainDir,
      backupDir: layout.backupDir,
      settingsFrom: settings.backup.sourceDn,
      replaces: lastFailed && last ? [last.leaf] : [],
    });
  }
  return plan;
}

export const kvmbackupCommand: Command = {
  name: 'kvmbackup',
  summary: 'back up this node\'s VMs in one batch, without daemons (for cron)',
  usage: 'stoney-backup kvmbackup [--include a,b] [--exclude a,b] [--force] [--dry-run] [--json] [--config FILE]',
  help: `The original KVMBackup wrapper for one node: lists the VMs of this node
(sstNode = STONEY_NODE_NAME) that libvirt knows, drops the excluded ones and
those whose last backup did not finish (saying which and why), then backs the
rest up as one batch: snapshot all, then merge and retain each, writing every
transition to the directory, and finally 'finished'. The node steps run in
this process; no daemon is needed. Meant for cron (deploy/stoney-backup.cron).
A backup an interrupted run left in the middle (no change for
STONEY_CLAIM_TIMEOUT_S) is driven to its end first.

Options:
  --include a,b   only these VMs
  --exclude a,b   not these VMs
  --force         also back up VMs whose last backup failed (its leaf is replaced)
  --dry-run       print the plan; change nothing on disk or in the directory
  --json          print the plan or the result as JSON on stdout
  --verbose       log steps (JSON) on stderr

${exitCodeHelp}`,
  options: {
    include: { type: 'string' },
    exclude: { type: 'string' },
    force: { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' },
    verbose: { type: 'boolean' },
  },
  async run({ values, config, io }) {
    const rt = await Runtime.create(config, { daemon: false, verbose: values['verbose'] === true, io });
    try {
      const nodeName = requireNodeName(rt.config);
      const directory = await rt.connect();
      const { virsh } = await rt.hypervisor();
      const leaf = formatLeafName(new Date());
      // Take the node lock and recover interrupted steps before deciding anything
      // (a dry run only reads, and takes no lock).
      if (values['dry-run'] !== true) await startLocalNode(rt, directory, nodeName, progressPrinter(io));
      // Backups an interrupted run left in the middle are driven to their end first: nothing else would.
      const resumed = values['dry-run'] === true ? [] : await resumeInterruptedBackups(rt, directory, nodeName);
      if (resumed === undefined) return ExitCode.interrupted;
      const resumedFailed = summarize(resumed).failed.length > 0;
      const plan = await planKvmBackup(directory, virsh, nodeName, leaf, {
        include: listOption(values['include']),
        exclude: listOption(values['exclude']),
        force: values['force'] === true,
        imageRoots: rt.config.imageRoots,
      });
      const chosen = plan.filter((p) => p.backup);
      if (values['dry-run'] === true) {
        if (values['json'] === true) io.out(JSON.stringify({ node: nodeName, leaf, plan }, null, 2));
        else {
          io.out(`kvmbackup on ${nodeName}, leaf ${leaf} (dry run: nothing is changed)`);
          for (const p of plan) {
            io.out(p.backup ? `  back up  ${p.vm}: retain ${p.retainDir} → ${p.backupDir}${p.replaces?.length ? `; replaces failed leaf ${p.replaces.join(', ')}` : ''}` : `  skip     ${p.vm}: ${p.reason}`);
          }
        }
        return ExitCode.ok;
      }
      for (const p of plan.filter((x) => !x.backup)) io.err(`skipping ${p.vm}: ${p.reason}`);
      // A VM left out because its last backup failed gets no backup tonight
      // either: cron's monitoring must see that, even when the rest succeeded.
      const skippedAfterFailure = plan.filter((p) => p.lastBackupFailed).map((p) => p.vm);
      const unlessSkipped = (code: number): number => {
        if (code === ExitCode.ok && resumedFailed) return ExitCode.backupFailed;
        if (code !== ExitCode.ok || skippedAfterFailure.length === 0) return code;
        io.err(`not backed up because their last backup failed: ${skippedAfterFailure.join(', ')} (exit ${ExitCode.skippedAfterFailure})`);
        return ExitCode.skippedAfterFailure;
      };
      if (chosen.length === 0) {
        io.err(`nothing to back up on ${nodeName}`);
        if (values['json'] === true) io.out(JSON.stringify({ node: nodeName, leaf, plan, leaves: [], resumed }, null, 2));
        return unlessSkipped(ExitCode.ok);
      }
      // Replace failed leaves being retried (--force) by today's.
      const vms: VmEntry[] = [];
      for (const p of chosen) {
        for (const old of p.replaces ?? []) {
          const l = (await directory.listLeaves(p.vm)).find((x) => x.leaf === old);
          if (l) await directory.deleteLeaf(l.dn);
        }
        const vm = await directory.getVm(p.vm);
        if (vm) vms.push(vm);
      }
      return unlessSkipped(await runBatchAndReport(rt, directory, vms, leaf, values['json'] === true ? (leaves) => ({ node: nodeName, leaf, plan, leaves, resumed }) : undefined));
    } finally {
      await rt.close();
    }
  },
};

/**
 * Drive on the backups of this node's VMs that an interrupted run (kvmbackup
 * killed, a control daemon gone) left at a control-side mode, once they have
 * been idle for the claim timeout. Returns their leaves as they ended
 * (undefined when a signal stopped it).
 */
async function resumeInterruptedBackups(rt: Runtime, directory: BackupDirectory, nodeName: string): Promise<LeafEntry[] | undefined> {
  const vms = await directory.listVms({ node: nodeName });
  const stuck = interruptedBackups(await directory.listLeavesOfVms(vms.map((v) => v.name)), new Date(), rt.config.policy.claimTimeoutMs);
  const ended: LeafEntry[] = [];
  for (const [leaf, leaves] of stuck) {
    const names = new Set(leaves.map((l) => l.vm));
    rt.io.err(`resuming the interrupted backup ${leaf} of ${[...names].join(', ')} (${leaves.map((l) => `${l.vm}: ${l.mode}`).join(', ')})`);
    const result = await driveBatch(rt, directory, vms.filter((v) => names.has(v.name)), leaf);
    if (!result) return undefined;
    for (const l of result) rt.io.err(`resumed ${l.vm} ${l.leaf}: ${l.mode}${l.returnValue ? ` (return value ${l.returnValue}: ${describeReturnCode(l.returnValue)})` : ''}`);
    ended.push(...result);
  }
  return ended;
}
