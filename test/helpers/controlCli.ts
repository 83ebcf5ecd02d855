/**
 * `stoney-backup control` as a process of its own (dist/ build), with its
 * JSON log lines collected, for the tests of several control daemons.
 * Every process started here is SIGKILLed when the test process exits.
 */
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { PROJECT_ROOT } from './slapd.js';

const CLI = path.join(PROJECT_ROOT, 'bin/stoney-backup.js');
const running = new Set<ControlCli>();
process.once('exit', () => {
  for (const c of running) c.child.kill('SIGKILL');
});

export class ControlCli {
  readonly child: ResultPromise<{ env: Record<string, string>; reject: false; buffer: true; extendEnv: true }>;
  out = '';
  readonly startedAt = performance.now();

  constructor(readonly name: string, env: Record<string, string>) {
    this.child = execa('node', [CLI, 'control'], { env, reject: false, buffer: true, extendEnv: true });
    this.child.stdout?.on('data', (c: Buffer) => {
      this.out += c.toString();
    });
    running.add(this);
    void this.child.finally(() => running.delete(this));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get exited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  /** How many log lines carry `msg` exactly. */
  count(msg: string): number {
    return this.logLines().filter((l) => l['msg'] === msg).length;
  }

  logLines(): Record<string, unknown>[] {
    return this.out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  /** Waits until the log has `times` lines with message `msg`; resolves false on timeout or exit. */
  async waitFor(msg: string, timeoutMs: number, times = 1): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    while (this.count(msg) < times) {
      if (this.exited || Date.now() > end) return false;
      await new Promise((r) => setTimeout(r, 50));
    }
    return true;
  }

  async stop(signal: 'SIGTERM' | 'SIGKILL'): Promise<{ exitCode: number | undefined; signal: string | undefined }> {
    this.child.kill(signal);
    const r = await this.child;
    return { exitCode: r.exitCode, signal: r.signal };
  }
}

/** The environment of a control daemon against a private slapd; each gets its own feed state directory. */
export function controlEnv(o: { url: string; bindDn: string; passwordFile: string; baseDn: string }, stateDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    STONEY_LDAP_URL: o.url,
    STONEY_LDAP_BIND_DN: o.bindDn,
    STONEY_LDAP_PASSWORD_FILE: o.passwordFile,
    STONEY_LDAP_BASE_DN: o.baseDn,
    STONEY_FEED_STATE_DIR: stateDir,
    STONEY_TIMEZONE: 'UTC',
    ...extra,
  };
}
