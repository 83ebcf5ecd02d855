import { NodeDaemon } from '../../node/NodeDaemon.js';
import { requireNodeName } from '../config.js';
import { ExitCode } from '../exitCodes.js';
import { Runtime } from '../runtime.js';
import type { Command } from '../command.js';

export const nodeCommand: Command = {
  name: 'node',
  summary: 'run the node daemon: claim and run the backup steps of this hypervisor\'s VMs',
  usage: 'stoney-backup node [--config FILE]',
  help: `Watches the directory for backup leaves of the VMs whose sstNode is
STONEY_NODE_NAME and runs the steps they ask for (snapshot, merge, retain).
At start, steps left half-done by a previous run are recovered first: the VM
is brought back onto an intact disk chain and the step is reported.
Logs JSON lines on stdout. Stops cleanly on SIGINT/SIGTERM (running steps end first).`,
  options: {},
  async run({ config }) {
    const rt = await Runtime.create(config, { daemon: true });
    try {
      const nodeName = requireNodeName(rt.config);
      const directory = await rt.connect();
      const { virsh, qemuImg } = await rt.hypervisor();
      const metrics = await rt.startMetrics('node');
      const feed = rt.changeFeed(directory, { node: nodeName }, metrics);
      const daemon = new NodeDaemon({ nodeName, directory, feed, virsh, qemuImg, imageRoots: rt.config.imageRoots, allowedRoots: rt.config.allowedRoots, logger: rt.logger, concurrency: rt.config.concurrency, runDir: rt.config.runDir, ...(metrics ? { metrics } : {}) });
      watchConfig(rt);
      await daemon.start();
      await rt.untilSignal();
      await daemon.stop();
      return ExitCode.ok;
    } finally {
      await rt.close();
    }
  },
};

/** Log level changes apply at once; anything else needs a restart (said so in the log). */
export function watchConfig(rt: Runtime): void {
  const file = rt.config.configFile;
  if (!file) return;
  void import('chokidar').then(({ watch }) => {
    const watcher = watch(file, { ignoreInitial: true });
    watcher.on('change', () => {
      void import('../config.js').then(async ({ loadConfig }) => {
        try {
          const next = await loadConfig(file);
          if (next.logLevel && next.logLevel !== rt.logger.level) rt.logger.level = next.logLevel;
          const changed = JSON.stringify({ ...next, logLevel: '' }) !== JSON.stringify({ ...rt.config, logLevel: '' });
          rt.logger.warn({ file, logLevel: rt.logger.level, restartNeeded: changed }, changed ? 'configuration changed; restart the daemon to apply all of it' : 'configuration reloaded');
        } catch (err) {
          rt.logger.error({ file, err: (err as Error).message }, 'configuration file is invalid now; keeping the running configuration');
        }
      });
    });
    rt.onCleanup(() => watcher.close());
  });
}
