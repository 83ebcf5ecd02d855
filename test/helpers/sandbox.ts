import { readlinkSync } from 'node:fs';
import { execa, type ResultPromise } from 'execa';

/**
 * A daemon under the confinement of one of the deploy/ units, rebuilt without
 * systemd (this machine has no systemd as PID 1): a private mount namespace in
 * which every mount is read-only (ProtectSystem=strict) except `writable`
 * (ReadWritePaths= / StateDirectory=), an empty /tmp (PrivateTmp=), empty
 * /root and /home (ProtectHome=), the unit's capability bounding set, no
 * inheritable capabilities, no_new_privs (NoNewPrivileges=) and optionally
 * another uid (DynamicUser=). Not rebuilt: the system call filter,
 * PrivateDevices= and the Protect*Kernel* settings (no path or capability a
 * step uses; `systemd-analyze` checks their syntax).
 */
const SANDBOX_SCRIPT = String.raw`
set -euo pipefail
host_ns=$1 caps=$2 uid=$3 program=$4; shift 4
writable=()
while [[ $1 != -- ]]; do writable+=("$1"); shift; done
shift
# Never remount the host's mounts: this must be a mount namespace of its own.
[[ $(readlink /proc/self/ns/mnt) != "$host_ns" ]] || { echo "not in a private mount namespace: refusing" >&2; exit 97; }
# ProtectSystem=strict: every mount read-only but the API file systems.
findmnt -rno TARGET | while read -r t; do
  case $t in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
  mount -o remount,bind,ro "$t" 2>/dev/null || true
done
# ReadWritePaths= / StateDirectory=
for p in "${'$'}{writable[@]}"; do mount --bind "$p" "$p"; mount -o remount,bind,rw "$p"; done
# PrivateTmp=yes. The program lives in /opt in production; a test checkout may be below /tmp:
# it is bound into the fresh /tmp at its path before that replaces the host's.
fresh=$(mktemp -d /dev/shm/stoney-sandbox-tmp.XXXXXX)
mount -n -t tmpfs -o mode=1777 tmpfs "$fresh"
if [[ $program == /tmp/* ]]; then mkdir -p "$fresh${'$'}{program#/tmp}"; mount -n --bind "$program" "$fresh${'$'}{program#/tmp}"; fi
mount -n --move "$fresh" /tmp
rmdir "$fresh"
# ProtectHome=yes
for h in /home /root; do [[ -d $h ]] && mount -t tmpfs -o ro,mode=0755 tmpfs "$h"; done
user=()
[[ $uid == root ]] || user=(--reuid "$uid" --regid "$uid" --clear-groups)
exec setpriv "${'$'}{user[@]}" --bounding-set "$caps" --inh-caps -all --no-new-privs -- "$@"
`;

const words = (unitValue: string[]): string[] => unitValue.flatMap((v) => v.split(/\s+/)).filter(Boolean);

/** A unit's `CapabilityBoundingSet=` values → setpriv's `-all,+chown,+fowner`. */
export function boundingSetArg(unitValue: string[]): string {
  return ['-all', ...words(unitValue).map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`)].join(',');
}

const CAP_BITS: Record<string, number> = { CAP_CHOWN: 0, CAP_DAC_OVERRIDE: 1, CAP_DAC_READ_SEARCH: 2, CAP_FOWNER: 3, CAP_FSETID: 4, CAP_KILL: 5, CAP_SETGID: 6, CAP_SETUID: 7 };

/** A unit's `CapabilityBoundingSet=` values as the bit mask /proc/<pid>/status shows. */
export function capMask(unitValue: string[]): bigint {
  return words(unitValue).reduce((m, c) => {
    const bit = CAP_BITS[c];
    if (bit === undefined) throw new Error(`extend CAP_BITS with ${c}`);
    return m | (1n << BigInt(bit));
  }, 0n);
}

/** One `Name:\t<hex>` field of /proc/<pid>/status. */
export function statusMask(status: string, name: string): bigint {
  const m = new RegExp(`^${name}:\\s+([0-9a-f]+)$`, 'm').exec(status);
  if (!m?.[1]) throw new Error(`no ${name} in /proc status`);
  return BigInt(`0x${m[1]}`);
}

/** Not async: a ResultPromise returned from an async function would be awaited to the process's end. */
export function spawnSandboxed(o: { argv: string[]; env: Record<string, string>; writable: string[]; capabilities: string[]; uid?: number }): ResultPromise<{ reject: false; all: true }> {
  const hostNs = readlinkSync('/proc/self/ns/mnt');
  // The checkout the daemon runs from (the tests run in its root).
  const program = process.cwd();
  const args = ['--mount', '--propagation', 'private', 'bash', '-c', SANDBOX_SCRIPT, 'sandbox', hostNs, boundingSetArg(o.capabilities), o.uid === undefined ? 'root' : String(o.uid), program, ...o.writable, '--', ...o.argv];
  const child = execa('unshare', args, { env: o.env, reject: false, all: true });
  // A test process that dies early must not leave a daemon behind.
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  void child.finally(() => process.off('exit', kill));
  return child;
}
