#!/usr/bin/env bash
# Install stoney-backup for production from this checkout: build once in a
# temporary directory, then put only what runs into the prefix — the compiled
# dist/, bin/, ldif/, the docs, package.json with its lockfile and the runtime
# dependencies (`npm ci --omit=dev --ignore-scripts`: no devDependencies, no
# package's install script runs as root) — and the units and env example into
# /etc. Safe to run again: a file or directory is replaced only when its
# content differs, an existing env file is never touched, and nothing is
# enabled or started. Run `deploy/install.sh --help` for the options.
set -euo pipefail
umask 022

usage() {
  cat <<'EOF'
Usage: deploy/install.sh [options]

Builds stoney-backup from this checkout and installs the runtime:
  PREFIX/{bin,dist,ldif,docs,deploy,node_modules,package.json,package-lock.json,README.md}
  SYSCONFDIR/stoney-backup/stoney-backup.env.example      (always the current one)
  SYSCONFDIR/stoney-backup/stoney-backup.env              (only if missing; mode 600; edit it)
  SYSCONFDIR/systemd/system/stoney-backup-{node,control}.service
  SYSCONFDIR/cron.d/stoney-backup                         (only with --cron)
and runs `systemctl daemon-reload` when a unit changed. It enables nothing.

Options:
  --prefix DIR       where the runtime goes (default /opt/stoney-backup); the
                     units and cron file are rewritten to run DIR/bin/stoney-backup.js
  --sysconfdir DIR   instead of /etc (tests; the units then name DIR/stoney-backup)
  --cron             also install the kvmbackup cron file (only on nodes that do
                     not run stoney-backup-node: cron starts it at once)
  --no-systemd       do not run systemctl daemon-reload
  --dry-run          print what would be done, change nothing (no build either)
  -h, --help         this text

Needs node >= 20.19 and npm (the build fetches the devDependencies into a
temporary directory; the installed tree has none). Exit codes: 0 done,
1 a step failed, 2 bad arguments or an unsuitable target.
EOF
}

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$1" >&2; exit "${2:-1}"; }

prefix=/opt/stoney-backup
sysconfdir=/etc
with_cron=0
reload=1
dry=0
while (($#)); do
  case $1 in
    --prefix) [[ $# -ge 2 ]] || die "--prefix needs a directory" 2; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --sysconfdir) [[ $# -ge 2 ]] || die "--sysconfdir needs a directory" 2; sysconfdir=$2; shift 2 ;;
    --sysconfdir=*) sysconfdir=${1#*=}; shift ;;
    --cron) with_cron=1; shift ;;
    --no-systemd) reload=0; shift ;;
    --dry-run) dry=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument ${1@Q} (see --help)" 2 ;;
  esac
done

# The paths are written into unit files and sed expressions: plain absolute paths only.
for p in "$prefix" "$sysconfdir"; do
  [[ $p =~ ^/[A-Za-z0-9._/-]+$ && $p != *//* && $p != */ && ! $p =~ (^|/)\.\.?(/|$) ]] ||
    die "${p@Q} is not a plain absolute directory (letters, digits, . _ - /; no trailing /, no . or .. components)" 2
done
[[ $prefix != / && $prefix != /usr && $prefix != /etc && $prefix != /opt ]] || die "--prefix $prefix would mix stoney-backup into a system directory" 2

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
for f in package.json package-lock.json tsconfig.json bin/stoney-backup.js src/cli/main.ts; do
  [[ -f $src/$f ]] || die "$src is not a stoney-backup checkout ($f missing)" 2
done
[[ $(realpath -m "$prefix") != "$src" ]] || die "--prefix $prefix is this checkout: clone elsewhere (e.g. /usr/local/src/stoney-backup) and install from there" 2

command -v node >/dev/null || die "node is not on PATH (Node.js >= 20.19 is needed)" 2
command -v npm >/dev/null || die "npm is not on PATH" 2
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' ||
  die "node $(node --version) is too old: >= 20.19 is needed" 2
[[ -x /usr/bin/node ]] || say "note: the units run /usr/bin/node, which does not exist here (node is $(command -v node))"

# An existing prefix must be one of ours: its managed directories get replaced.
marker=.stoney-backup-install
if [[ -d $prefix && ! -e $prefix/$marker ]] && [[ -n $(ls -A "$prefix") ]]; then
  die "$prefix exists and is not a stoney-backup installation (no $marker; a git checkout?): move it away or choose another --prefix" 2
fi

# Fail before building, with a clear word, where the result could not be written.
nearest_existing() { local p=$1; while [[ ! -e $p ]]; do p=$(dirname "$p"); done; printf '%s' "$p"; }
if ((!dry)); then
  for p in "$prefix" "$(dirname "$prefix")" "$sysconfdir"; do
    e=$(nearest_existing "$p")
    [[ -w $e ]] || die "cannot write to $e (for $p): run as root, or choose --prefix / --sysconfdir" 2
  done
fi

changed_units=0
did_change=0

# install_file MODE SOURCE DEST: copy when missing or different (content or mode).
install_file() {
  local mode=$1 from=$2 to=$3
  if [[ -f $to ]] && cmp -s "$from" "$to" && [[ $(stat -c %a "$to") == "$mode" ]]; then
    return 1
  fi
  if ((dry)); then
    say "would install $to (mode $mode)"
  else
    install -D -m "$mode" "$from" "$to"
    say "installed $to"
  fi
  did_change=1
  return 0
}

# Units and cron file as installed: the default paths replaced by --prefix and --sysconfdir.
rewrite_paths() {
  sed -e "s|/opt/stoney-backup|$prefix|g" -e "s|/etc/stoney-backup|$sysconfdir/stoney-backup|g" "$1"
}

stage=
cleanup() { [[ -z $stage ]] || rm -rf "$stage"; }
trap cleanup EXIT
stage=$(mktemp -d "${TMPDIR:-/tmp}/stoney-backup-install.XXXXXX")

for f in stoney-backup-node.service stoney-backup-control.service stoney-backup.cron stoney-backup.env.example; do
  rewrite_paths "$src/deploy/$f" >"$stage/$f"
done

# --- 1. Build (and the runtime tree) in temporary directories; nothing of the system changes here.
if ((dry)); then
  say "would build: npm ci --ignore-scripts (with devDependencies) and tsc in a copy of $src under ${TMPDIR:-/tmp}"
  say "would assemble the runtime and run npm ci --omit=dev --ignore-scripts beside $prefix, then replace each of"
  say "  bin dist ldif docs deploy node_modules package.json package-lock.json README.md in $prefix whose content differs"
else
  build=$stage/build
  mkdir -p "$build"
  cp -a "$src/package.json" "$src/package-lock.json" "$src/tsconfig.json" "$src/src" "$src/workflows" "$build/"
  say "building in $build (npm ci --ignore-scripts, tsc)"
  # --ignore-scripts: no package's install script runs (as root); `prepare`
  # (tsc) is run explicitly below instead. The build needs typescript only.
  (cd "$build" && npm ci --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null) ||
    die "npm ci for the build failed (network or npm cache?)"
  (cd "$build" && node node_modules/typescript/bin/tsc -p tsconfig.json) || die "the build (tsc) failed"
  [[ -f $build/dist/src/cli/main.js ]] || die "the build did not produce dist/src/cli/main.js"

  # The runtime tree beside the prefix (same file system), so that each part is
  # swapped in by a rename: a daemon never sees a half-copied dist/ or node_modules/.
  parent=$(dirname "$prefix")
  mkdir -p "$parent"
  rt=$(mktemp -d "$parent/.$(basename "$prefix").install.XXXXXX")
  stage_rt=$rt
  cleanup() { rm -rf "$stage" "$stage_rt"; }
  mkdir -p "$rt/bin" "$rt/dist" "$rt/deploy"
  cp -a "$src/package.json" "$src/package-lock.json" "$src/README.md" "$rt/"
  cp -a "$src/bin/stoney-backup.js" "$rt/bin/"
  cp -a "$src/ldif" "$src/docs" "$rt/"
  # Compiled JavaScript only: no source maps (their sources are not shipped), no test benches.
  (cd "$build/dist" && find src workflows -name '*.js' -print0 | xargs -0 cp --parents -p -t "$rt/dist")
  cp -a "$stage/stoney-backup-node.service" "$stage/stoney-backup-control.service" "$stage/stoney-backup.cron" "$rt/deploy/"
  cp -a "$stage/stoney-backup.env.example" "$rt/deploy/"
  (cd "$rt" && npm ci --omit=dev --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null) ||
    die "npm ci --omit=dev for the runtime failed (network or npm cache?)"
  chmod -R u=rwX,go=rX "$rt"
  chmod 755 "$rt/bin/stoney-backup.js"

  # --- 2. Swap in what differs.
  mkdir -p "$prefix"
  [[ -e $prefix/$marker ]] || { printf 'installed by deploy/install.sh; bin dist ldif docs deploy node_modules are replaced on the next run\n' >"$prefix/$marker"; did_change=1; }
  for d in bin dist ldif docs deploy node_modules; do
    if [[ -d $prefix/$d ]] && diff -rq --no-dereference "$rt/$d" "$prefix/$d" >/dev/null 2>&1; then
      continue
    fi
    if [[ -e $prefix/$d ]]; then
      mv "$prefix/$d" "$rt/$d.old"
    fi
    mv "$rt/$d" "$prefix/$d"
    say "installed $prefix/$d/"
    did_change=1
  done
  for f in package.json package-lock.json README.md; do
    install_file 644 "$rt/$f" "$prefix/$f" || true
  done
fi

# --- 3. Configuration, units, cron.
etc=$sysconfdir/stoney-backup
install_file 644 "$stage/stoney-backup.env.example" "$etc/stoney-backup.env.example" || true
if [[ -e $etc/stoney-backup.env ]]; then
  say "kept $etc/stoney-backup.env (compare with stoney-backup.env.example beside it)"
else
  install_file 600 "$stage/stoney-backup.env.example" "$etc/stoney-backup.env" || true
  say "edit $etc/stoney-backup.env, and put the bind password into $etc/ldap.password (mode 600)"
fi
for u in stoney-backup-node.service stoney-backup-control.service; do
  if install_file 644 "$stage/$u" "$sysconfdir/systemd/system/$u"; then changed_units=1; fi
done
if ((with_cron)); then
  install_file 644 "$stage/stoney-backup.cron" "$sysconfdir/cron.d/stoney-backup" || true
fi

if ((changed_units && reload)); then
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    if ((dry)); then say "would run systemctl daemon-reload"; else systemctl daemon-reload && say "systemctl daemon-reload"; fi
  else
    say "systemd is not running here: no daemon-reload"
  fi
fi

if ((dry)); then
  say "dry run: nothing was changed"
elif ((did_change)); then
  say "done; restart running daemons to use the new version (systemctl restart stoney-backup-node / stoney-backup-control)"
else
  say "nothing to change: $prefix and $sysconfdir are up to date"
fi
