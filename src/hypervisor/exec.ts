import { execa, type Options } from 'execa';
import type { Logger } from 'pino';

/**
 * The one place where stoney-backup starts processes. Argument arrays only
 * (never a shell), a timeout on everything, stderr kept for the error.
 */
export interface RunOptions {
  timeoutMs?: number;
  /** exit codes that are not a failure (e.g. qemu-io's) */
  okExitCodes?: number[];
  input?: string;
  signal?: AbortSignal;
  logger?: Logger;
  env?: Record<string, string>;
  /** an open descriptor of ours the child gets as its fd 3 (flock(1) locks through it) */
  passFd?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  durationMs: number;
}

export class CommandError extends Error {
  override name = 'CommandError';
  constructor(
    readonly command: string[],
    readonly exitCode: number | undefined,
    readonly stderr: string,
    readonly stdout: string,
    readonly reason: string,
  ) {
    super(`${command.join(' ')}: ${reason}${stderr.trim() ? `: ${stderr.trim()}` : ''}`);
  }

  /** The command was killed because it ran past its timeout. */
  get timedOut(): boolean {
    return this.reason.startsWith('timed out');
  }
}

const DEFAULT_TIMEOUT_MS = 10 * 60 * 1000;

export async function run(command: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const argv = [command, ...args];
  const started = performance.now();
  const result = await execa(command, args, {
    reject: false,
    timeout: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    input: opts.input,
    cancelSignal: opts.signal,
    // Own process group: a Ctrl-C or SIGTERM meant for us must not cut a
    // `virsh save`/`restore` in half (libvirtd would finish it regardless, and
    // we would then act on a wrong picture). We end our children ourselves.
    detached: true,
    env: { LC_ALL: 'C', ...opts.env },
    stripFinalNewline: false,
    // execa hands a numeric stdio entry to child_process as is (the descriptor is
    // inherited); its types only list strings and streams for fd 3 and up.
    ...(opts.passFd !== undefined ? { stdio: ['pipe', 'pipe', 'pipe', opts.passFd] as unknown as Options['stdio'] } : {}),
  });
  const durationMs = Math.round(performance.now() - started);
  const stdout = String(result.stdout ?? '');
  const stderr = String(result.stderr ?? '');
  const exitCode = result.exitCode ?? -1;
  opts.logger?.debug({ cmd: argv, exitCode, durationMs }, 'exec');
  const ok = opts.okExitCodes ?? [0];
  if (result.timedOut) throw new CommandError(argv, undefined, stderr, stdout, `timed out after ${opts.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`);
  if (result.isCanceled) throw new CommandError(argv, undefined, stderr, stdout, 'cancelled');
  if (result.failed && result.exitCode === undefined) {
    throw new CommandError(argv, undefined, stderr, stdout, result.shortMessage ?? 'could not run');
  }
  if (!ok.includes(exitCode)) throw new CommandError(argv, exitCode, stderr, stdout, `exit code ${exitCode}`);
  return { stdout, stderr, exitCode, durationMs };
}

/** A long-running process whose output is collected until it is stopped. */
export interface CollectingProcess {
  /** Ends the process (SIGTERM) and returns everything it printed on stdout. */
  stop(): Promise<string>;
}

/**
 * Start a process that runs until stopped (e.g. `virsh event --loop`); it is
 * killed after `timeoutMs` at the latest so that nothing outlives a step.
 */
export function startCollecting(command: string, args: readonly string[], opts: { timeoutMs: number; logger?: Logger }): CollectingProcess {
  const child = execa(command, args, { reject: false, timeout: opts.timeoutMs, detached: true, env: { LC_ALL: 'C' }, stripFinalNewline: false });
  let stdout = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    stdout += chunk.toString('utf8');
  });
  const done = child.then(
    () => undefined,
    () => undefined,
  );
  return {
    async stop() {
      child.kill('SIGTERM');
      await done;
      opts.logger?.debug({ cmd: [command, ...args] }, 'exec (collected)');
      return stdout;
    },
  };
}

/** A process we talk to line by line on stdin/stdout (e.g. a QMP monitor). */
export interface LineProcess {
  send(line: string): void;
  /** Called with each line the process prints on stdout. */
  onLine(listener: (line: string) => void): void;
  /** Settles when the process has ended: its exit code (-1 when killed) and stderr. */
  readonly ended: Promise<{ exitCode: number; stderr: string }>;
  kill(): void;
}

/**
 * Start a process that reads commands on stdin and answers on stdout. It is
 * killed after `timeoutMs` at the latest, or when `signal` aborts.
 */
export function startLineProcess(command: string, args: readonly string[], opts: { timeoutMs: number; signal?: AbortSignal; logger?: Logger }): LineProcess {
  const started = performance.now();
  const child = execa(command, args, {
    reject: false,
    timeout: opts.timeoutMs,
    cancelSignal: opts.signal,
    detached: true,
    env: { LC_ALL: 'C' },
    stdin: 'pipe',
    stripFinalNewline: false,
  });
  const listeners: ((line: string) => void)[] = [];
  let pending = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    pending += chunk.toString('utf8');
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      for (const l of listeners) l(line);
    }
  });
  const ended = child.then((r) => {
    opts.logger?.debug({ cmd: [command, ...args], exitCode: r.exitCode, durationMs: Math.round(performance.now() - started) }, 'exec (line process)');
    return { exitCode: r.exitCode ?? -1, stderr: String(r.stderr ?? '') };
  });
  return {
    send(line) {
      child.stdin?.write(`${line}\n`);
    },
    onLine(listener) {
      listeners.push(listener);
    },
    ended,
    kill() {
      child.kill('SIGKILL');
    },
  };
}
