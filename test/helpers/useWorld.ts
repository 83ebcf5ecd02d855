import { afterAll, beforeAll } from 'vitest';
import { World } from './world.js';

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
