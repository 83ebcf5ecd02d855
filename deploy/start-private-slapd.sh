#!/usr/bin/env bash
# Start a private OpenLDAP slapd for the stoney-backup demo / quickstart.
#
#   deploy/start-private-slapd.sh <dir> <port>
#
# <dir>/slapd.d  cn=config (from ldif/config.ldif: the original stoney cloud
#                schema the project uses + the stoney-backup extension)
# <dir>/data     the mdb database, loaded once with ldif/sample-tree.ldif
# <dir>/rootpw   the rootdn password (mode 600, no trailing newline)
# <dir>/slapd.pid, <dir>/slapd.log
#
# Idempotent: when a slapd for <dir> already runs, it says so and exits 0.
# Listens on 127.0.0.1:<port> only. Stop it with: kill "$(cat <dir>/slapd.pid)"
# Never touches a system slapd (/etc/ldap/slapd.d, /var/lib/ldap).
set -euo pipefail

usage() {
  echo "usage: $0 <dir> <port>" >&2
  exit 2
}
[[ $# -eq 2 ]] || usage
[[ $2 =~ ^[0-9]+$ ]] && (( $2 > 0 && $2 < 65536 )) || { echo "port must be 1-65535: $2" >&2; exit 2; }

SLAPD=/usr/sbin/slapd
SLAPADD=/usr/sbin/slapadd
SCHEMADIR=/etc/ldap/schema
LDIFDIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../ldif" && pwd)"
BASE_DN='o=stepping-stone,c=ch'
BIND_DN="cn=admin,${BASE_DN}"

mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
PORT="$2"
PIDFILE="$DIR/slapd.pid"
PWFILE="$DIR/rootpw"
URLFILE="$DIR/url"

for tool in "$SLAPD" "$SLAPADD" /usr/bin/ldapsearch /usr/sbin/slappasswd; do
  [[ -x $tool ]] || { echo "missing $tool (apt-get install slapd ldap-utils)" >&2; exit 1; }
done

report() {
  echo "URL:           $(cat "$URLFILE")"
  echo "base DN:       $BASE_DN"
  echo "bind DN:       $BIND_DN"
  echo "password file: $PWFILE"
  echo "pid:           $(cat "$PIDFILE")  (stop: kill \"\$(cat $PIDFILE)\")"
}

running_pid() {
  [[ -f $PIDFILE ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Is it really our slapd (pid files outlive their processes)?
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/slapd.d" || return 1
  echo "$pid"
}

if pid="$(running_pid)"; then
  echo "a private slapd for $DIR already runs (pid $pid)"
  report
  exit 0
fi
rm -f "$PIDFILE"

if [[ ! -f $DIR/.initialized ]]; then
  rm -rf "$DIR/slapd.d" "$DIR/data"
  mkdir -p "$DIR/slapd.d" "$DIR/data"
  chmod 700 "$DIR/slapd.d" "$DIR/data"
  if [[ ! -s $PWFILE ]]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=\n' > "$PWFILE")
  fi
  chmod 600 "$PWFILE"
  hash="$(/usr/sbin/slappasswd -T "$PWFILE")"
  (umask 077 && sed \
    -e "s|@DBDIR@|$DIR/data|g" \
    -e "s|@SUFFIX@|$BASE_DN|g" \
    -e "s|@ROOTDN@|$BIND_DN|g" \
    -e "s|@ROOTPW@|$hash|g" \
    -e "s|@PIDFILE@|$PIDFILE|g" \
    -e "s|@ARGSFILE@|$DIR/slapd.args|g" \
    -e "s|@SCHEMADIR@|$SCHEMADIR|g" \
    -e "s|@LDIFDIR@|$LDIFDIR|g" \
    "$LDIFDIR/config.ldif" > "$DIR/config.ldif")
  "$SLAPADD" -n0 -F "$DIR/slapd.d" -l "$DIR/config.ldif"
  "$SLAPADD" -F "$DIR/slapd.d" -b "$BASE_DN" -l "$LDIFDIR/sample-tree.ldif"
  touch "$DIR/.initialized"
  echo "initialised $DIR (schema + sample tree)"
fi

URL="ldap://127.0.0.1:${PORT}/"
echo "$URL" > "$URLFILE"
# Foreground mode (-d none: errors only) in its own session, so the log
# keeps slapd's complaints and the process outlives this script.
setsid "$SLAPD" -F "$DIR/slapd.d" -h "$URL" -d none >> "$DIR/slapd.log" 2>&1 < /dev/null &
child=$!

for _ in $(seq 1 100); do
  if /usr/bin/ldapsearch -x -H "$URL" -D "$BIND_DN" -y "$PWFILE" -b "$BASE_DN" -s base dn > /dev/null 2>&1; then
    # slapd writes the pid file itself; wait for it if it lags.
    for _ in $(seq 1 20); do [[ -s $PIDFILE ]] && break; sleep 0.1; done
    [[ -s $PIDFILE ]] || echo "$child" > "$PIDFILE"
    echo "private slapd started"
    report
    exit 0
  fi
  if ! kill -0 "$child" 2>/dev/null; then
    echo "slapd exited; its log ($DIR/slapd.log):" >&2
    tail -n 20 "$DIR/slapd.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "slapd did not answer on $URL within 10 s; log ($DIR/slapd.log):" >&2
tail -n 20 "$DIR/slapd.log" >&2
kill "$child" 2>/dev/null || true
exit 1
