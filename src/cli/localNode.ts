import { PollingChangeFeed } from '../directory/PollingChangeFeed.js';
import type { LdapBackupDirectory } from '../directory/LdapBackupDirectory.js';
import { NodeDaemon } from '../node/NodeDaemon.js';
import type { StepProgress } from '../node/StepContext.js';
import type { Runtime } from './runtime.js';

/**
 * The node side in-process, for kvmbackup and `backup --local`: the same
 * NodeDaemon as the service, watching this node's leaves at a short interval
 * while the command drives the batch. Stopped by the runtime's cleanup.
 */
export async function startLocalNode(rt: Runtime, directory: LdapBackupDirectory, nodeName: string, onProgress?: (p: StepProgress) => void): Promise<NodeDaemon> {
  const { virsh, qemuImg } = await rt.hypervisor();
  const feed = new PollingChangeFeed(directory, { node: nodeName }, { intervalMs: 200, logger: rt.logger });
  const daemon = new NodeDaemon({
    nodeName, directory, feed, virsh, qemuImg,
    imageRoots: rt.config.imageRoots,
    allowedRoots: rt.config.allowedRoots,
    logger: rt.logger,
    concurrency: rt.config.concurrency, runDir: rt.config.runDir,
    ...(onProgress ? { onProgress } : {}),
  });
  await daemon.start();
  rt.onCleanup(() => daemon.stop());
  return daemon;
}
