import { describe, expect, it } from 'vitest';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { World } from '../helpers/world.js';
import { useWorld } from '../helpers/useWorld.js';
import { guestReadMatches, virsh } from '../helpers/libvirt.js';
import { PollingChangeFeed } from '../../src/directory/PollingChangeFeed.js';
import { NodeDaemon } from '../../src/node/NodeDaemon.js';
import { Virsh } from '../../src/hypervisor/Virsh.js';
import { ReturnCode } from '../../src/domain/returnCodes.js';
import { stateFileNameOf } from '../../src/node/snapshotStep.js';

/**
 * The save method stops the VM; if neither the restore onto the overlays nor
 * the restore onto the images moved back succeeds, the VM stays stopped and
 * the state file is the only copy of its memory. libvirt does not fail a
 * restore on demand, so a Virsh whose `restore` fails injects it; everything
 * else is real.
 */
class RestoreFails extends Virsh {
  override async restore(): Promise<void> {
    throw new Error('injected: virsh restore failed');
  }
}

const A = 0xab;
let w: World;
useWorld((x) => (w = x));

async function stateFilesBelow(dir: string, name: string): Promise<string[]> {
  const all = await readdir(dir, { recursive: true }).catch(() => [] as string[]);
  return all.filter((f) => path.basename(f) === name).map((f) => path.join(dir, f));
}

describe('a save-method snapshot whose restores all fail', () => {
  it('keeps the state file that holds the stopped VM\'s memory, and a human restores the VM from it', async () => {
    const tiny = await w.addVm('savestop', { running: true, pattern: A, method: 'save' });
    const feed = new PollingChangeFeed(w.directory, { node: w.nodeName }, { intervalMs: 150, logger: w.logger });
    const daemon = new NodeDaemon({ ...w.nodeDaemonOptions(feed), virsh: new RestoreFails(w.libvirtUri, w.logger) });
    await daemon.start();
    const leaf = '20261120T010000Z';
    try {
      await w.startSnapshot(tiny.name, leaf);
      const l = await w.waitForMode(tiny.name, leaf, ['snapshotted']);
      expect(l.returnValue).toBe(ReturnCode.cannotRestoreMachine);
    } finally {
      await daemon.stop();
    }
    expect(await virsh.domState(tiny.name)).toBe('shut off');
    const name = stateFileNameOf(tiny.name, leaf);
    const kept = [...(await stateFilesBelow(w.retainRoot, name)), ...(await stateFilesBelow(w.root, name))];
    expect(kept.length).toBeGreaterThan(0);
    // The runbook's way back: the images are in place again, the memory in that file.
    await virsh.restore(kept[0]!);
    expect(await virsh.domState(tiny.name)).toBe('running');
    expect(await guestReadMatches(tiny.name, 'vda', A, '0', '1M')).toBe(true);
  });
});
