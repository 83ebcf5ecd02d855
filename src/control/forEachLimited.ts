/**
 * Run `fn` over `items` with at most `limit` calls in flight. Many small
 * LDAP operations on one connection are bound by round trips, not by the
 * server: a few in flight at once keep it busy. Once `signal` aborts, no new
 * call starts; the ones running finish. The first error is thrown after
 * the running calls have settled.
 */
export async function forEachLimited<T>(items: readonly T[], limit: number, signal: AbortSignal | undefined, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { err: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (next < items.length && !failure && !signal?.aborted) {
      const item = items[next++] as T;
      try {
        await fn(item);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failure) throw failure.err;
}
