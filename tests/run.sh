#!/usr/bin/env bash
# `make test`: the unit, integration and e2e tiers, each started as soon as what it needs is
# built. The unit tier needs only helm, so it runs while the control plane and kwok build; the
# integration tier needs only those, so the node's binaries and the images, which only the e2e
# tier runs, build behind it (niced, so the tests keep the CPU they ask for). On a fresh machine
# that hides about 11 of a cold run's minutes; on a warm one the builds take a second.
#
#   PYTEST_ARGS="..." tests/run.sh     (after the venv, Debian packages and lint; see Makefile)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RDO_CACHE:=/var/cache/remote-docker-operator}"
venv=$RDO_CACHE/venv/bin
read -ra args <<<"${PYTEST_ARGS:-}"
mkdir -p .artifacts
jobs=()
# An interrupted run leaves no build behind.
trap 'kill "${jobs[@]}" 2>/dev/null || true' EXIT

# waitfor PID LOG WHAT: the background build's end; its log's tail if it failed.
waitfor() {
  if ! wait "$1"; then
    echo "tests/run.sh: building $3 failed ($2):" >&2
    tail -n 50 "$2" >&2
    exit 1
  fi
}

cluster/build-bins.sh tools # helm: the unit tier renders the chart with it
cp_log=.artifacts/control-plane-build.log
cluster/build-bins.sh control-plane kwok >"$cp_log" 2>&1 &
control_plane=$!
jobs+=("$control_plane")
rc=0
"$venv/pytest" tests/unit "${args[@]}" || rc=$?
waitfor "$control_plane" "$cp_log" "the control plane and kwok"

e2e_log=.artifacts/e2e-build.log
nice -n 19 ionice -c 3 bash -c 'cluster/build-bins.sh node && "$1" images/build.py >/dev/null' \
  _ "$venv/python" >"$e2e_log" 2>&1 &
e2e_build=$!
jobs+=("$e2e_build")
"$venv/pytest" tests/integration "${args[@]}" || rc=$?
waitfor "$e2e_build" "$e2e_log" "the e2e tier's binaries and images"

"$venv/pytest" tests/e2e "${args[@]}" || rc=$?
exit "$rc"
