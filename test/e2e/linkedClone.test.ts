import { describe, expect, it } from 'vitest';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { World } from '../helpers/world.js';
import { useWorldWithNodeDaemon } from '../helpers/useWorld.js';
import { backingFileOf, imageMatches, virsh } from '../helpers/libvirt.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { run } from '../../src/hypervisor/exec.js';

let w: World;
useWorldWithNodeDaemon((x) => (w = x));

describe('a linked clone (disk on top of a template image)', () => {
  it('is backed up and merged without flattening the template into the live disk', async () => {
    const tiny = await w.addVm('clone', { running: false });
    const disk = tiny.disks[0]!.path;
    const template = path.join(w.imageDir, `${tiny.name}-template.qcow2`);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', template, '64M']);
    await run('qemu-io', ['-c', 'write -P 0xab 0 1M', template]);
    await rm(disk);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', template, disk]);
    await run('qemu-io', ['-c', 'write -P 0xcd 2M 1M', disk]);

    const leaf = '20261122T060000Z';
    const [done] = await runBackupBatch({ directory: w.directory, vms: [(await w.directory.getVm(tiny.name))!], leaf, policy: defaultBatchPolicy, logger: w.logger });
    expect({ mode: done?.mode, rv: done?.returnValue }).toEqual({ mode: 'finished', rv: 0 });
    expect(await virsh.domState(tiny.name)).toBe('shut off');
    // The live disk still sits on the template, and sees both layers.
    expect(await backingFileOf(disk)).toBe(template);
    expect(await imageMatches(disk, 0xab, '0', '1M')).toBe(true);
    expect(await imageMatches(disk, 0xcd, '2M', '1M')).toBe(true);
  });
});
