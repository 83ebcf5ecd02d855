import { errorMessage } from '../domain/errors.js';
import { ExitCode } from './exitCodes.js';
import { main } from './runCli.js';

/**
 * Once the command has returned, the process ends with its code even if a
 * timer or socket that some library left behind would keep it alive: a
 * daemon that failed must exit, so that systemd restarts it. The grace
 * period lets stdout/stderr drain.
 */
function exitWith(code: number): void {
  process.exitCode = code;
  setTimeout(() => process.exit(code), 2_000).unref();
}

main(process.argv.slice(2)).then(exitWith, (err: unknown) => {
  process.stderr.write(`stoney-backup: ${errorMessage(err)}\n`);
  exitWith(ExitCode.internal);
});
