import { run } from './exec.js';

/** flock(1)'s exit code when the lock is held elsewhere (EX_TEMPFAIL). */
const CONFLICT = 75;

/**
 * Take an exclusive flock(2) on an open file without waiting; true when taken.
 * Node has no flock binding, so flock(1) does it on the descriptor it inherits
 * (the shell's `exec 9>file; flock -n 9`): the lock belongs to the open file
 * description, so it outlives flock(1) and is held until our descriptor is
 * closed — by us, or by the kernel when our process dies, however it dies.
 */
export async function tryFlockExclusive(fd: number): Promise<boolean> {
  const r = await run('flock', ['--exclusive', '--nonblock', '--conflict-exit-code', String(CONFLICT), '3'], { passFd: fd, okExitCodes: [0, CONFLICT], timeoutMs: 30_000 });
  return r.exitCode === 0;
}
