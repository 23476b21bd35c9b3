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
#   Extra arguments go to every `cargo test`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export HERALD_CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERALD_CACHE/target}"
export HERALD_TEST_BROKERS="${HERALD_TEST_BROKERS:-127.0.0.1:9092}"

infra/kafka/install.sh >/dev/null

# The brokers start in the background while the tests build.
started_broker=0
started_cluster=0
brokers_log="$(mktemp)"
if ! infra/dev/broker.sh status >/dev/null 2>&1; then
    export HERALD_BROKER_DATA="$HERALD_CACHE/test-broker"
    rm -rf "$HERALD_BROKER_DATA"
    started_broker=1
else
    echo "test: using the broker that is already running"
fi
if ! infra/dev/cluster.sh status >/dev/null 2>&1; then
    export HERALD_CLUSTER_DATA="$HERALD_CACHE/test-cluster"
    rm -rf "$HERALD_CLUSTER_DATA"
    started_cluster=1
else
    echo "test: using the cluster that is already running"
fi
(
    if [[ $started_broker == 1 ]]; then infra/dev/broker.sh start; fi
    if [[ $started_cluster == 1 ]]; then infra/dev/cluster.sh start; fi
) >"$brokers_log" 2>&1 &
brokers_pid=$!
HERALD_TEST_CLUSTER="$(infra/dev/cluster.sh bootstrap)"
export HERALD_TEST_CLUSTER
cleanup() {
    # Whatever still runs in the background (a failed build leaves the
    # brokers' start or the installs going).
    jobs -p | xargs -r kill 2>/dev/null || true
    if [[ $started_cluster == 1 ]]; then infra/dev/cluster.sh stop || true; fi
    if [[ $started_broker == 1 ]]; then infra/dev/broker.sh stop || true; fi
    rm -rf "$brokers_log" "${cluster_log:-}" "${installs:-}"
}
trap cleanup EXIT

# What the tests drive, installed in the background while the tests build:
# Debian's HAProxy (the load-balancer test) and promtool (the alert rules'
# check), Helm built from the Go module proxy (the chart's render check),
# Chromium and the TypeScript client (npm ci, built) for the browser tests,
# and the analytics recipes' Python client (a virtualenv in the cache). Each
# script prints what it installed on stdout.
installs="$(mktemp -d)"
(
    set -e
    infra/dev/install-haproxy.sh >/dev/null
    infra/dev/install-promtool.sh >"$installs/promtool"
    infra/dev/install-helm.sh >"$installs/helm"
    infra/dev/install-browser.sh >"$installs/chromium"
    infra/dev/install-python.sh >"$installs/python"
) 2>"$installs/log" &
installs_pid=$!

echo "test: building every test (target dir $CARGO_TARGET_DIR)"
cargo test --workspace --no-run "$@"
if ! wait "$brokers_pid"; then
    cat "$brokers_log"
    echo "test: the brokers did not start" >&2
    exit 1
fi
cat "$brokers_log"
if ! wait "$installs_pid"; then
    cat "$installs/log"
    echo "test: installing what the tests need failed" >&2
    exit 1
fi
HERALD_PROMTOOL="$(cat "$installs/promtool")"
HERALD_HELM="$(cat "$installs/helm")"
CHROMIUM="$(cat "$installs/chromium")"
HERALD_PYTHON="$(cat "$installs/python")"
export HERALD_PROMTOOL HERALD_HELM CHROMIUM HERALD_PYTHON

status=0
# The cluster's fault suites (they stop, kill and pause its brokers) run one
# test at a time, beside the rest, which use the single broker and brokers
# of their own; bounded, so a hang fails the run instead of stalling it.
cluster_log="$(mktemp)"
timeout 20m cargo test -p herald --no-fail-fast --test cluster --test chaos "$@" -- --test-threads=1 \
    >"$cluster_log" 2>&1 &
cluster_pid=$!

echo "test: the TypeScript client's unit tests"
(cd clients/typescript && node --test test/) || status=1
cargo test --workspace --exclude herald --no-fail-fast "$@" || status=1
# herald's end-to-end tests: one binary, each test with its own nodes and
# topic prefix, so they run in parallel.
cargo test -p herald --no-fail-fast --bin herald --test e2e "$@" -- --test-threads=4 || status=1
# The single-broker fault suite kills nodes and restarts its own brokers:
# one test at a time, after the parallel ones.
cargo test -p herald --no-fail-fast --test faults "$@" -- --test-threads=1 || status=1

echo "test: the cluster's fault suites (cluster, chaos)"
wait "$cluster_pid" || status=1
cat "$cluster_log"
exit $status
