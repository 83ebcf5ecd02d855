/**
 * The control daemon as the bench runs it: the real ControlDaemon, sync
 * feed and LdapBackupDirectory, in a process of its own (so that its RSS
 * is its own), on a session that counts the searches it sends. Started by
 * controlBench.ts with fork(); reports over IPC.
 *
 * Messages: { type: 'started', ms, vms, leaves } once; { type: 'stats',
 * searches, rssKb } every second; { type: 'stopped', ms } after SIGTERM.
 */
import pino from 'pino';
import { LdapSession } from '../../src/directory/LdapSession.js';
import { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { SyncReplChangeFeed } from '../../src/directory/SyncReplChangeFeed.js';
import { ControlDaemon } from '../../src/control/ControlDaemon.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';

class CountingSession extends LdapSession {
  searches = 0;
  override search(...args: Parameters<LdapSession['search']>): ReturnType<LdapSession['search']> {
    this.searches += 1;
    return super.search(...args);
  }
}

function env(name: string): string {
  const v = process.env[name];
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
}

const send = (m: object) => process.send?.(m);

async function main(): Promise<void> {
  const t0 = performance.now();
  // Logged as the daemon logs in production (info, synchronous writes), to a file.
  const logger = pino({ level: 'info', base: { pid: process.pid } }, pino.destination({ dest: env('BENCH_LOG_FILE'), sync: true }));
  const connection = { url: env('BENCH_URL'), bindDn: env('BENCH_BIND_DN'), passwordFile: env('BENCH_PASSWORD_FILE') };
  const session = new CountingSession(connection);
  await session.bind();
  const directory = new LdapBackupDirectory(session, env('BENCH_BASE_DN'));
  const feed = new SyncReplChangeFeed({ ...connection, baseDn: env('BENCH_BASE_DN'), scope: {}, logger, stateFile: env('BENCH_STATE_FILE') });
  const mergeConcurrency = Number(process.env.STONEY_MERGE_CONCURRENCY ?? defaultBatchPolicy.mergeConcurrency);
  const daemon = new ControlDaemon({ directory, feed, logger, policy: { ...defaultBatchPolicy, mergeConcurrency }, zone: 'UTC' });
  await daemon.start();
  send({ type: 'started', ms: performance.now() - t0, searches: session.searches, ...daemon.known });
  const stats = setInterval(() => send({ type: 'stats', searches: session.searches, rssKb: Math.round(process.memoryUsage().rss / 1024) }), 1_000);
  process.once('SIGTERM', () => {
    const t = performance.now();
    clearInterval(stats);
    void daemon.stop().then(async () => {
      await session.close();
      send({ type: 'stopped', ms: performance.now() - t });
      logger.flush();
      process.exit(0);
    });
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`control bench process: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
