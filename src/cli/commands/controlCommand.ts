import { ControlDaemon } from '../../control/ControlDaemon.js';
import { ControlLease, type LeaseTerm } from '../../control/ControlLease.js';
import type { LdapBackupDirectory } from '../../directory/LdapBackupDirectory.js';
import { leaseGuardedDirectory } from '../../control/leaseGuardedDirectory.js';
import { openLdapSession } from '../../directory/connect.js';
import { LdapLeaseStore } from '../../directory/LdapLeaseStore.js';
import { errorMessage } from '../../domain/errors.js';
import type { BackupMetrics } from '../../metrics/BackupMetrics.js';
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
Old leaves beyond sstBackupNumberOfIterations are removed.

Several control daemons may run (e.g. one per host): one is active, the
others wait as standbys. The active one holds a lease in the directory
(cn=control-lease,ou=backup,ou=configuration,<service>) and renews it every
STONEY_CONTROL_LEASE_RENEW_S; a standby takes over when it has not been
renewed for STONEY_CONTROL_LEASE_S by the directory server's clock, and at
once when the active one stops (SIGTERM releases the lease). The new active
one carries on every batch from the leaves in the directory.`,
  options: {},
  async run({ config }) {
    const rt = await Runtime.create(config, { daemon: true });
    try {
      const directory = await rt.connect();
      const metrics = await rt.startMetrics('control');
      const lease = await openControlLease(rt, metrics);
      watchConfig(rt);
      const signal = rt.untilSignal().then(() => 'signal' as const);
      // Standby until the lease is ours; active until it is lost (then standby again) or the process stops.
      for (;;) {
        const term = await lease.acquire(rt.abort.signal).catch((err: unknown) => {
          throw new CliError(`cannot take part in the control lease: ${errorMessage(err)}`, ExitCode.directoryUnavailable);
        });
        if (!term) return ExitCode.ok;
        const ended = await driveWhileActive(rt, directory, metrics, lease, term, signal);
        if (ended === 'signal') return ExitCode.ok;
        if (ended instanceof Error) throw new CliError(`the control daemon gave up: ${ended.message}`, ExitCode.directoryUnavailable);
      }
    } finally {
      await rt.close();
    }
  },
};

/**
 * One term as the active daemon: a fresh ControlDaemon (its writes refused
 * once the lease is gone) until a signal, a fatal error or the loss of the
 * lease. The lease is released unless it was lost.
 */
async function driveWhileActive(
  rt: Runtime, directory: LdapBackupDirectory, metrics: BackupMetrics | undefined, lease: ControlLease, term: LeaseTerm, signal: Promise<'signal'>,
): Promise<'signal' | 'lost' | Error> {
  metrics?.activeChanged(true);
  const daemon = new ControlDaemon({
    directory: leaseGuardedDirectory(directory, () => lease.assertHeld()),
    feed: rt.changeFeed(directory, {}, metrics),
    logger: rt.logger,
    policy: rt.config.policy,
    ...(rt.config.timeZone ? { zone: rt.config.timeZone } : {}),
    ...(metrics ? { metrics } : {}),
    ...(term.previousWriteAt ? { catchUpFrom: term.previousWriteAt } : {}),
    ...(term.serverOffsetMs !== undefined ? { serverOffsetMs: term.serverOffsetMs } : {}),
  });
  try {
    await daemon.start();
  } catch (err) {
    // The feed and timers must not keep a daemon alive that could not start.
    await stopWithin(daemon, rt);
    await lease.release();
    throw err;
  }
  const ended = await Promise.race([signal, daemon.fatal, term.lost.then(() => 'lost' as const)]);
  await stopWithin(daemon, rt);
  metrics?.activeChanged(false);
  metrics?.watchSite(undefined);
  // Stopped or given up: hand over at once instead of making a standby wait for the lease to expire.
  if (ended !== 'lost') await lease.release();
  return ended;
}

/** The lease on a connection of its own (renewals never queue behind the site's searches), each operation bounded by the renew interval. */
async function openControlLease(rt: Runtime, metrics: BackupMetrics | undefined): Promise<ControlLease> {
  const timing = rt.config.controlLease;
  let session;
  try {
    session = await openLdapSession({ ...rt.config.ldap, timeoutMs: timing.renewMs });
  } catch (err) {
    throw new CliError(`cannot use the directory at ${rt.config.ldap.url} for the control lease: ${errorMessage(err)}`, ExitCode.directoryUnavailable);
  }
  const s = session;
  rt.onCleanup(() => s.close());
  return new ControlLease(new LdapLeaseStore(session, rt.config.ldap.baseDn), timing, rt.logger, metrics ? (ok) => metrics.directoryReachable(ok) : undefined);
}

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
