/** The CLI's exit codes: a public API, documented in the README and --help. */
export const ExitCode = {
  ok: 0,
  /** at least one backup or step failed (details per VM in the output) */
  backupFailed: 1,
  /** bad arguments or configuration */
  usage: 2,
  /** the directory cannot be reached or the bind fails */
  directoryUnavailable: 3,
  /** libvirt does not answer */
  libvirtUnavailable: 4,
  /** nothing matched (unknown VM, no backup) */
  notFound: 5,
  /** kvmbackup: the run itself succeeded, but it skipped a VM whose last backup failed (it stays without a new backup until --force) */
  skippedAfterFailure: 6,
  /** an unexpected error (a bug: please report it with the log) */
  internal: 10,
  /** stopped by SIGINT/SIGTERM */
  interrupted: 130,
} as const;

export const exitCodeHelp = `Exit codes:
  0    success
  1    at least one backup or step failed (see the per-VM report)
  2    bad arguments or configuration
  3    the directory cannot be reached or the bind fails
  4    libvirt does not answer
  5    not found (unknown VM, no such backup)
  6    kvmbackup skipped a VM because its last backup failed (--force retries it)
  10   unexpected internal error
  130  interrupted (SIGINT/SIGTERM)`;
