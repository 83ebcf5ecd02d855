#!/usr/bin/env bash
# Prepare a Debian host for stoney-backup: install slapd tools, QEMU and libvirt
# when missing, and start libvirtd when none answers. Safe to run again: every
# step checks before it acts. Needs root.
#
#   deploy/setup-host.sh            install + start libvirtd
#   deploy/setup-host.sh --check    only report what is missing (exit 1 if anything)
set -euo pipefail

check_only=0
[[ "${1:-}" == "--check" ]] && check_only=1
LIBVIRT_URI="${STONEY_LIBVIRT_URI:-qemu:///system}"

log() { printf 'setup-host: %s\n' "$*" >&2; }

need_cmds=(slapd slapadd ldapsearch qemu-img qemu-io qemu-storage-daemon qemu-system-x86_64 virsh libvirtd virtlogd strace prometheus promtool systemd-analyze unshare setpriv nsenter)
missing=()
for c in "${need_cmds[@]}"; do
  command -v "$c" >/dev/null 2>&1 || [[ -x "/usr/sbin/$c" ]] || missing+=("$c")
done

if ((check_only)); then
  if ((${#missing[@]})); then log "missing: ${missing[*]}"; exit 1; fi
  virsh -c "$LIBVIRT_URI" version >/dev/null 2>&1 || { log "libvirtd does not answer on $LIBVIRT_URI"; exit 1; }
  log "ok"; exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root (installs packages, starts libvirtd)"; exit 1
fi

if ((${#missing[@]})); then
  log "installing packages (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    slapd ldap-utils qemu-utils qemu-system-x86 \
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients strace prometheus systemd util-linux >/dev/null
  # The tests start their own Prometheus on loopback; the package's service is not wanted here.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 && systemctl is-enabled -q prometheus 2>/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# The stoney cloud's default image group; harmless where it exists already.
getent group vm-storage >/dev/null || groupadd --system vm-storage

if virsh -c "$LIBVIRT_URI" version >/dev/null 2>&1; then
  log "libvirtd answers on $LIBVIRT_URI"
  exit 0
fi

# No running libvirtd: start one the way a host without systemd needs it.
mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt/qemu
# The QEMU driver refuses to initialise unless its default user and groups exist.
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home --gid kvm --shell /usr/sbin/nologin libvirt-qemu
qemu_conf=/etc/libvirt/qemu.conf
if [[ ! -s "$qemu_conf" ]]; then
  log "writing $qemu_conf (root-owned QEMU, no cgroups, no security driver)"
  mkdir -p /etc/libvirt
  cat >"$qemu_conf" <<'CONF'
# Written by stoney-backup deploy/setup-host.sh for a host without systemd.
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
CONF
fi
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 1 50); do
  virsh -c "$LIBVIRT_URI" version >/dev/null 2>&1 && { log "libvirtd started"; exit 0; }
  sleep 0.2
done
log "libvirtd did not answer on $LIBVIRT_URI within 10 s; see /var/log/libvirt/libvirtd.log"
exit 1
