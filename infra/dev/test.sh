#!/usr/bin/env bash
# The whole test suite, on a fresh machine or not. Installs Apache Kafka from
# Maven Central if needed (first time ~35 s, cached in ~/.cache/herald), the
# Python client of the analytics recipes (a virtualenv there too) and
# Debian's HAProxy (the load-balancer test), Chromium and the TypeScript
# client's npm packages (the browser tests) and Helm (built with go
# install, the chart's render check), starts a
# single broker on 127.0.0.1:9092 and a three-broker cluster (RF 3,
# min.insync.replicas=2) on 127.0.0.1:29092-29094, each with fresh data,
# runs every test in the workspace, and stops what it started.
#
#   HERALD_CACHE       cache root (default ~/.cache/herald)
#   CARGO_TARGET_DIR   build dir (default $HERALD_CACHE/target, shared by runs)
#   Extra arguments go to every `cargo test` / `cargo nextest run`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export HERALD_CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERALD_CACHE/target}"
export HERALD_TEST_BROKERS="${HERALD_TEST_BROKERS:-127.0.0.1:9092}"

infra/kafka/install.sh >/dev/null

started_broker=0
if ! infra/dev/broker.sh status >/dev/null 2>&1; then
    export HERALD_BROKER_DATA="$HERALD_CACHE/test-broker"
    rm -rf "$HERALD_BROKER_DATA"
    infra/dev/broker.sh start
    started_broker=1
else
    echo "test: using the broker that is already running"
fi
started_cluster=0
if ! infra/dev/cluster.sh status >/dev/null 2>&1; then
    export HERALD_CLUSTER_DATA="$HERALD_CACHE/test-cluster"
    rm -rf "$HERALD_CLUSTER_DATA"
    infra/dev/cluster.sh start
    started_cluster=1
else
    echo "test: using the cluster that is already running"
fi
HERALD_TEST_CLUSTER="$(infra/dev/cluster.sh bootstrap)"
export HERALD_TEST_CLUSTER
cleanup() {
    if [[ $started_cluster == 1 ]]; then infra/dev/cluster.sh stop || true; fi
    if [[ $started_broker == 1 ]]; then infra/dev/broker.sh stop || true; fi
}
trap cleanup EXIT

# HAProxy for the load-balancer test (Debian's package).
infra/dev/install-haproxy.sh >/dev/null
# promtool for the alert rules' check (Debian's prometheus package).
HERALD_PROMTOOL="$(infra/dev/install-promtool.sh)"
export HERALD_PROMTOOL
# Helm for the chart's render check (built from the Go module proxy).
HERALD_HELM="$(infra/dev/install-helm.sh)"
export HERALD_HELM

# Chromium and the TypeScript client (npm ci, built) for the browser tests.
CHROMIUM="$(infra/dev/install-browser.sh)"
export CHROMIUM

# The analytics recipes' Python client (a virtualenv in the cache).
HERALD_PYTHON="$(infra/dev/install-python.sh)"
export HERALD_PYTHON

echo "test: building and running the workspace tests (target dir $CARGO_TARGET_DIR)"
# The fault suite (it restarts brokers and kills edges) and the cluster tests
# run on their own after everything else, one test at a time, so their load
# cannot time out other tests' Kafka requests.
status=0
echo "test: the TypeScript client's unit tests"
(cd clients/typescript && node --test test/) || status=1
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast -E 'not (binary(faults) | binary(cluster) | binary(chaos))' "$@" || status=1
    cargo nextest run -p herald --test faults --test cluster --test chaos --no-fail-fast -j 1 "$@" || status=1
else
    cargo test --workspace --no-fail-fast --exclude herald "$@" || status=1
    cargo test -p herald --no-fail-fast "$@" -- --test-threads=1 || status=1
fi
exit $status
