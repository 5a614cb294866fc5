#!/usr/bin/env bash
# `make test`: the unit, integration and e2e tiers. The unit and integration tiers need only the
# control plane, kwok and helm, so the node's binaries and the images, which only the e2e tier
# runs, build behind them (niced, so the tests keep the CPU they ask for). On a fresh machine
# that hides about 10 of a cold run's minutes; on a warm one both builds take a second.
#
#   PYTEST_ARGS="..." tests/run.sh     (after the venv, Debian packages and lint; see Makefile)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RDO_CACHE:=/var/cache/remote-docker-operator}"
venv=$RDO_CACHE/venv/bin
read -ra args <<<"${PYTEST_ARGS:-}"

cluster/build-bins.sh control-plane kwok tools

mkdir -p .artifacts
log=.artifacts/e2e-build.log
nice -n 19 ionice -c 3 bash -c 'cluster/build-bins.sh node && "$1" images/build.py >/dev/null' \
  _ "$venv/python" >"$log" 2>&1 &
build=$!
# An interrupted run leaves no build behind.
trap 'kill "$build" 2>/dev/null || true' EXIT

rc=0
"$venv/pytest" tests/unit tests/integration "${args[@]}" || rc=$?

if ! wait "$build"; then
  echo "tests/run.sh: building the e2e tier's binaries and images failed ($log):" >&2
  tail -n 50 "$log" >&2
  exit 1
fi
"$venv/pytest" tests/e2e "${args[@]}" || rc=$?
exit "$rc"
