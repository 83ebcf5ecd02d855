import { SiteModel } from '../../control/SiteModel.js';
import { CheckState, evaluateBackupCheck, type CheckedVm } from '../../control/evaluateBackupCheck.js';
import { errorMessage } from '../../domain/errors.js';
import { providerUrls } from '../../directory/providerUrls.js';
import { formatDuration, parseDuration } from '../../domain/duration.js';
import type { Command } from '../command.js';
import { Runtime, type Io } from '../runtime.js';

const DEFAULT_MAX_AGE = '26h';

export const checkCommand: Command = {
  name: 'check',
  summary: 'monitoring check (Nagios/Icinga/Zabbix): are the backups recent and good?',
  usage: 'stoney-backup check [VM...] [--max-age DURATION] [--json] [--config FILE]',
  help: `Prints one line in the monitoring-plugin format, STATE: summary | perfdata,
and exits with the plugin's code:
  0  OK        every VM checked has a good backup younger than --max-age
  1  WARNING   a workflow waits for a human (failed restore, …) or runs for
               longer than STONEY_STEP_TIMEOUT_S since its planned time
  2  CRITICAL  a VM has no finished backup younger than --max-age
               (default ${DEFAULT_MAX_AGE}), or its newest backup failed
  3  UNKNOWN   the directory cannot be read, or bad arguments
Without VM arguments the whole site is checked; excluded VMs
(sstBackupExcludeFromBackup) are skipped. A backup's age is that of its
planned instant (the leaf name). DURATION: 26h, 90m, 1d12h or seconds.
--json prints the verdict per VM instead (same exit code).`,
  options: { 'max-age': { type: 'string' }, json: { type: 'boolean' } },
  // An unknown option too is UNKNOWN (3): a monitoring system reads 2 as CRITICAL, not as "bad arguments".
  usageError: (message, io) => unknownState(message, io),
  async run({ positionals, values, config, io }) {
    // Every failure is UNKNOWN (3), in the plugin's one line on stdout.
    const unknown = (why: string) => unknownState(why, io);
    let maxAgeMs: number;
    let rt: Runtime;
    try {
      maxAgeMs = parseDuration(typeof values['max-age'] === 'string' ? values['max-age'] : DEFAULT_MAX_AGE);
      rt = await Runtime.create(config, { daemon: false, io });
    } catch (err) {
      return unknown(errorMessage(err));
    }
    try {
      let vms: CheckedVm[];
      try {
        vms = await readVms(rt, positionals);
      } catch (err) {
        return unknown(`cannot read the directory at ${providerUrls(rt.config.ldap).join(' ')}: ${errorMessage(err)}`);
      }
      const result = evaluateBackupCheck(vms, new Date(), { maxAgeMs, maxRuntimeMs: rt.config.policy.stepTimeoutMs });
      if (values['json'] === true) io.out(JSON.stringify({ state: result.state, maxAge: formatDuration(maxAgeMs), vms: result.vms }, null, 2));
      else io.out(result.line);
      return CheckState[result.state];
    } finally {
      await rt.close();
    }
  },
};

function unknownState(why: string, io: Io): number {
  io.out(`UNKNOWN: ${why.replace(/\s*\n\s*/g, ' ')}`);
  return CheckState.UNKNOWN;
}

/** The site in three paged searches (as the control daemon reads it), narrowed to the VMs asked for. */
async function readVms(rt: Runtime, names: string[]): Promise<CheckedVm[]> {
  const directory = await rt.connect();
  const model = new SiteModel(directory.baseDn);
  model.replaceAll(await directory.loadSite());
  const missing = names.filter((n) => model.vm(n) === undefined);
  if (missing.length > 0) throw new Error(`no VM ${missing.join(', ')} in the directory`);
  const vms = names.length > 0 ? names.map((n) => model.vm(n)).filter((v) => v !== undefined) : [...model.allVms()];
  return vms.map((vm) => {
    let excluded = false;
    try {
      excluded = model.settingsOf(vm).excluded;
    } catch {
      // unreadable settings: check the VM rather than hide it
    }
    return { name: vm.name, excluded, leaves: model.leavesOfVm(vm.name) };
  });
}
