#!/usr/bin/env bash
# The project's test command (README: `npm ci && npm test`; .ci/run calls it too).
# Installs and starts what the tests need (QEMU, libvirtd, slapd binaries), builds,
# type-checks everything including the tests, then runs unit, integration
# (private slapd) and end-to-end (slapd + libvirtd + QEMU) tests.
# End-to-end tests fail, never skip, when slapd or libvirtd cannot start; with
# CI=true a run that skipped anything fails as well.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "host: packages and libvirtd (deploy/setup-host.sh)"
bash deploy/setup-host.sh

if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  step "npm ci"
  npm ci --no-audit --no-fund
fi

step "build and type-check (src, workflows, tests)"
npx tsc -p tsconfig.json
npx tsc -p tsconfig.test.json

step "tests: unit, integration (real slapd), e2e (real slapd + libvirt/QEMU)"
report=$(mktemp /tmp/stoney-vitest-XXXXXX.json)
started=$(mktemp /tmp/stoney-run-started-XXXXXX)
trap 'rm -f "$report" "$started"' EXIT
set +e
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
status=$?
set -e

# One plain closing line that any CI reads: "N passed, N failed, N skipped".
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const skipped = r.numPendingTests + (r.numTodoTests ?? 0);
  console.log(`\ntests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
  const e2e = r.testResults.filter((f) => f.name.includes("/test/e2e/"));
  const e2eRan = e2e.reduce((n, f) => n + f.assertionResults.filter((a) => a.status === "passed" || a.status === "failed").length, 0);
  console.log(`e2e tests executed against real slapd and libvirt: ${e2eRan}`);
  if (process.env.CI === "true" && (skipped > 0 || e2eRan === 0)) {
    console.error("CI: skipped tests or no e2e test executed — failing the run");
    process.exit(1);
  }
' "$report" || status=1

# Nothing of ours may outlive the run.
leftover=$(pgrep -f 'slapd -F /tmp/stoney' || true)
if [[ -n $leftover ]]; then echo "stray slapd processes: $leftover" >&2; status=1; fi
leftover=$(pgrep -f 'qemu-storage-daemon' || true)
if [[ -n $leftover ]]; then echo "stray qemu-storage-daemon processes: $leftover" >&2; status=1; fi
# Killed steps (the crash tests) must not leave files outside the directories recovery cleans.
leftover=$(find /tmp -maxdepth 1 -name 'stoney-restore-*' -newer "$started" 2>/dev/null || true)
if [[ -n $leftover ]]; then echo "stray temporary directories: $leftover" >&2; status=1; fi
if virsh -c "${STONEY_LIBVIRT_URI:-qemu:///system}" list --all --name 2>/dev/null | grep -q '^sbt'; then
  echo "stray test VMs:" >&2; virsh -c "${STONEY_LIBVIRT_URI:-qemu:///system}" list --all --name | grep '^sbt' >&2; status=1
fi
exit "$status"
