#!/usr/bin/env bash
# The whole test suite, on a fresh machine or not: installs the broker if
# needed (first time: 15-25 min build, cached in ~/.cache/herald) and the
# Python client of the analytics recipes (a virtualenv there too), starts it
# with a fresh data directory, runs every test in the workspace against it,
# and stops it again if this script started it.
#
#   HERALD_CACHE       cache root (default ~/.cache/herald)
#   CARGO_TARGET_DIR   build dir (default $HERALD_CACHE/target, shared by runs)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export HERALD_CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERALD_CACHE/target}"
export HERALD_TEST_BROKERS="${HERALD_TEST_BROKERS:-127.0.0.1:9092}"

started=0
if ! infra/dev/broker.sh status >/dev/null 2>&1; then
    # A fresh data directory per run keeps the broker's sqlite file small.
    export HERALD_BROKER_DATA="$HERALD_CACHE/test-broker-data"
    rm -rf "$HERALD_BROKER_DATA"
    infra/dev/broker.sh start
    started=1
else
    echo "test: using the broker that is already running"
fi
cleanup() {
    if [[ $started == 1 ]]; then infra/dev/broker.sh stop; fi
}
trap cleanup EXIT

# The analytics recipes' Python client (a virtualenv in the cache).
HERALD_PYTHON="$(infra/dev/install-python.sh)"
export HERALD_PYTHON

echo "test: building and running the workspace tests (target dir $CARGO_TARGET_DIR)"
# The fault suite restarts brokers, kills edges and floods the broker; it runs
# on its own after everything else, so its load cannot time out other tests'
# Kafka requests (Tansu answers metadata slowly when busy).
status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast -E 'not binary(faults)' "$@" || status=1
    cargo nextest run -p herald --test faults --no-fail-fast "$@" || status=1
else
    cargo test --workspace --no-fail-fast --exclude herald "$@" || status=1
    cargo test -p herald --no-fail-fast "$@" -- --test-threads=1 || status=1
fi
exit $status
