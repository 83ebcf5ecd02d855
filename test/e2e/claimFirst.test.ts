import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { World } from '../helpers/world.js';
import { NodeDaemon } from '../../src/node/NodeDaemon.js';
import type { BackupDirectory, ChangeEvent, ChangeFeed } from '../../src/directory/types.js';

/**
 * The node daemon claims a command on the mode its change event carried,
 * before it reads the leaf or the VM (the sync feed sends a node only leaves
 * of its VMs, with their mode). A feed is scripted here to deliver the one
 * event a race produces — a command for a VM that moved to another node a
 * moment ago — which the real feed cannot be made to send on demand.
 */
class ScriptedFeed implements ChangeFeed {
  private onChange: ((e: ChangeEvent) => void) | undefined;
  async start(onChange: (e: ChangeEvent) => void): Promise<void> {
    this.onChange = onChange;
  }
  async stop(): Promise<void> {
    this.onChange = undefined;
  }
  send(e: ChangeEvent): void {
    this.onChange?.(e);
  }
}

/** The directory, with every call the daemon makes recorded as "method dn". */
function recorded(directory: BackupDirectory, calls: string[]): BackupDirectory {
  return new Proxy(directory, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        calls.push(`${String(prop)} ${typeof args[0] === 'string' ? args[0] : ''}`.trim());
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

let w: World;
let daemon: NodeDaemon;
const feed = new ScriptedFeed();
const calls: string[] = [];

beforeAll(async () => {
  w = await World.start();
  daemon = new NodeDaemon(w.nodeDaemonOptions(feed, recorded(w.directory, calls)));
  await daemon.start();
});
afterAll(async () => {
  await daemon?.stop();
  await w?.cleanup();
});

async function commandLeaf(vm: string, leaf: string): Promise<string> {
  expect(await w.directory.createLeaf(vm, leaf)).toBe(true);
  const dn = (await w.leaf(vm, leaf)).dn;
  expect(await w.directory.casMode(dn, 'initialize', 'initialized')).toBe(true);
  expect(await w.directory.casMode(dn, 'initialized', 'snapshot', { state: '0' })).toBe(true);
  return dn;
}

describe('claim first, read after', () => {
  it('claims a command with its first directory call, then reads what the step needs', async () => {
    // libvirt does not know this VM: the claimed step fails, but it was this node's to claim.
    const vm = (await w.addVm('cf-own', { running: false, noDomain: true })).name;
    const dn = await commandLeaf(vm, '20261130T010000Z');
    calls.length = 0;
    feed.send({ kind: 'leaf', dn, attributes: { sstprovisioningmode: ['snapshot'] } });
    await w.waitFor(async () => (await w.leaf(vm, '20261130T010000Z')).mode === 'snapshotted');
    await daemon.idle();
    expect(calls[0]).toBe(`casMode ${dn}`);
    expect(calls.slice(1, 3).sort()).toEqual([`getLeaf ${dn}`, `getVm ${vm}`]);
    expect((await w.leaf(vm, '20261130T010000Z')).returnValue).not.toBe(0);
  });

  it('hands a command back when the VM turns out to be on another node', async () => {
    const vm = (await w.addVm('cf-moved', { running: false, noDomain: true, node: 'node-77.example.com' })).name;
    const dn = await commandLeaf(vm, '20261130T020000Z');
    calls.length = 0;
    feed.send({ kind: 'leaf', dn, attributes: { sstprovisioningmode: ['snapshot'] } });
    await w.waitFor(async () => calls.filter((c) => c === `casMode ${dn}`).length === 2);
    await daemon.idle();
    const leaf = await w.leaf(vm, '20261130T020000Z');
    expect({ mode: leaf.mode, rv: leaf.returnValue ?? 0 }).toEqual({ mode: 'snapshot', rv: 0 });
  });

  it('reads first when the event carries no mode or a stale one', async () => {
    const vm = (await w.addVm('cf-stale', { running: false, noDomain: true })).name;
    const dn = await commandLeaf(vm, '20261130T030000Z');
    calls.length = 0;
    // The event says merge, the leaf says snapshot: the compare-and-swap fails, then the leaf is read and claimed.
    feed.send({ kind: 'leaf', dn, attributes: { sstprovisioningmode: ['merge'] } });
    await w.waitFor(async () => (await w.leaf(vm, '20261130T030000Z')).mode === 'snapshotted');
    await daemon.idle();
    expect(calls.slice(0, 2)).toEqual([`casMode ${dn}`, `getLeaf ${dn}`]);
  });
});
