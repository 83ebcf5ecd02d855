import { ControlDaemon } from '../../control/ControlDaemon.js';
import { ExitCode } from '../exitCodes.js';
import { CliError, Runtime } from '../runtime.js';
import type { Command } from '../command.js';
import { watchConfig } from './nodeCommand.js';

export const controlCommand: Command = {
  name: 'control',
  summary: 'run the control daemon: plan backups from the schedules and drive them',
  usage: 'stoney-backup control [--config FILE]',
  help: `Every minute, reads each VM's schedule (sstCron*, looked up VM → pool →
global, in the host's time zone or STONEY_TIMEZONE) and creates the leaf of
every backup that falls due, named after the planned time in UTC. VMs due at
the same instant form a batch: all are snapshotted first, then the successful
ones are merged and retained, STONEY_MERGE_CONCURRENCY at a time on each node
(nodes work in parallel). The site is held in memory, kept current by the
change feed and read again on every resync. Excluded VMs (sstBackupExcludeFromBackup: TRUE)
are skipped. Commands nobody claims within STONEY_CLAIM_TIMEOUT_S, and steps
without a report within STONEY_STEP_TIMEOUT_S, are failed with code 49.
Old leaves beyond sstBackupNumberOfIterations are removed.`,
  options: {},
  async run({ config }) {
    const rt = await Runtime.create(config, { daemon: true });
    try {
      const directory = await rt.connect();
      const metrics = await rt.startMetrics('control');
      const feed = rt.changeFeed(directory, {}, metrics);
      const daemon = new ControlDaemon({ directory, feed, logger: rt.logger, policy: rt.config.policy, ...(rt.config.timeZone ? { zone: rt.config.timeZone } : {}), ...(metrics ? { metrics } : {}) });
      watchConfig(rt);
      const signal = rt.untilSignal();
      try {
        await daemon.start();
      } catch (err) {
        // The feed and timers must not keep a daemon alive that could not start.
        await stopWithin(daemon, rt);
        throw err;
      }
      const ended = await Promise.race([signal.then(() => undefined), daemon.fatal]);
      await stopWithin(daemon, rt);
      if (ended instanceof Error) throw new CliError(`the control daemon gave up: ${ended.message}`, ExitCode.directoryUnavailable);
      return ExitCode.ok;
    } finally {
      await rt.close();
    }
  },
};

/** Stop the daemon, but never wait longer than systemd's patience: the process exits after it anyway. */
async function stopWithin(daemon: ControlDaemon, rt: Runtime, ms = 8_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      rt.logger.warn({ afterMs: ms }, 'the control daemon did not stop in time; exiting anyway');
      resolve();
    }, ms);
  });
  await Promise.race([daemon.stop().catch((err: unknown) => rt.logger.error({ err: String(err) }, 'stopping failed')), late]);
  clearTimeout(timer);
}
