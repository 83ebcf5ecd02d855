import { errorMessage } from '../domain/errors.js';
import { ExitCode } from './exitCodes.js';
import { main } from './runCli.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`stoney-backup: ${errorMessage(err)}\n`);
    process.exitCode = ExitCode.internal;
  },
);
