/**
 * Crash-safety tests need a kill at an exact instant of a multi-step file
 * operation, which no real fault produces on demand. With
 * STONEY_TEST_FAULT=<name> the process kills itself (SIGKILL: no cleanup
 * runs, as after a power loss) when it reaches the point of that name.
 * Unset, this does nothing.
 */
export function faultPoint(name: string): void {
  if (process.env['STONEY_TEST_FAULT'] === name) process.kill(process.pid, 'SIGKILL');
}

/**
 * The same, for an instant inside `work` (a subprocess libvirt runs on its
 * own, say): with STONEY_TEST_FAULT=<name> the process kills itself shortly
 * after `work` started, while it is still pending; the subprocess outlives it.
 */
export function faultPointWhile<T>(name: string, work: Promise<T>): Promise<T> {
  if (process.env['STONEY_TEST_FAULT'] !== name) return work;
  const timer = setTimeout(() => process.kill(process.pid, 'SIGKILL'), 50);
  return work.finally(() => clearTimeout(timer));
}
