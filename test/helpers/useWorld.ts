import { afterAll, beforeAll } from 'vitest';
import { World } from './world.js';
import { PollingChangeFeed } from '../../src/directory/PollingChangeFeed.js';
import { NodeDaemon } from '../../src/node/NodeDaemon.js';
import type { StepProgress } from '../../src/node/StepContext.js';

/** One World for the whole file, no daemon (the file starts its own), removed afterwards. */
export function useWorld(set: (w: World) => void): void {
  let world: World | undefined;
  beforeAll(async () => {
    world = await World.start();
    set(world);
  });
  afterAll(async () => {
    await world?.cleanup();
  });
}

/**
 * The usual e2e file: one World with a node daemon for the whole file,
 * removed afterwards. `set` receives the world once it runs, e.g.
 * `let w: World; useWorldWithNodeDaemon((x) => (w = x));`.
 */
export function useWorldWithNodeDaemon(set: (w: World) => void): void {
  let world: World | undefined;
  beforeAll(async () => {
    world = await World.start();
    set(world);
    await world.startNodeDaemon();
  });
  afterAll(async () => {
    await world?.cleanup();
  });
}

/**
 * Like useWorldWithNodeDaemon, but the node daemon hands every progress
 * report of its steps to `hook()` (asked at each report, so a test sets and
 * clears it): a test acts at an exact point of a step (fills a disk, kills
 * slapd, restarts libvirtd). `set` also receives the daemon.
 */
export function useWorldWithProgressHook(set: (w: World, daemon: NodeDaemon) => void, hook: () => ((p: StepProgress) => void) | undefined): void {
  let world: World | undefined;
  let daemon: NodeDaemon | undefined;
  beforeAll(async () => {
    world = await World.start();
    const feed = new PollingChangeFeed(world.directory, { node: world.nodeName }, { intervalMs: 150, logger: world.logger });
    daemon = new NodeDaemon({ ...world.nodeDaemonOptions(feed), onProgress: (p) => hook()?.(p) });
    set(world, daemon);
    await daemon.start();
  });
  afterAll(async () => {
    await daemon?.stop();
    await world?.cleanup();
  });
}
