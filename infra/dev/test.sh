#!/usr/bin/env bash
# The whole test suite, on a fresh machine or not. Installs Apache Kafka from
# Maven Central if needed (first time ~35 s, cached in ~/.cache/herald), the
# Python client of the analytics recipes (a virtualenv there too) and
# Debian's HAProxy (the load-balancer test), Chromium and the TypeScript
# client's npm packages (the browser tests), the Python client's test
# dependencies, and Helm (built with go
# install, the chart's render check), starts a
# single broker on 127.0.0.1:9092 and a three-broker cluster (RF 3,
# min.insync.replicas=2) on 127.0.0.1:29092-29094, each with fresh data,
# runs every test in the workspace, and stops what it started.
#
#   HERALD_CACHE       cache root (default ~/.cache/herald)
#   CARGO_TARGET_DIR   build dir (default $HERALD_CACHE/target, shared by runs)
#   Extra arguments go to the `cargo test --no-run` that builds the tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export HERALD_CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERALD_CACHE/target}"
export HERALD_TEST_BROKERS="${HERALD_TEST_BROKERS:-127.0.0.1:9092}"

infra/kafka/install.sh >/dev/null

# The brokers start in the background while the tests build.
# Each with fresh data, unless one is running already (then it is used and
# left running).
declare -A started=([broker]=0 [cluster]=0)
declare -A data_var=([broker]=HERALD_BROKER_DATA [cluster]=HERALD_CLUSTER_DATA)
for b in broker cluster; do
    if infra/dev/$b.sh status >/dev/null 2>&1; then
        echo "test: using the $b that is already running"
    else
        export "${data_var[$b]}=$HERALD_CACHE/test-$b"
        rm -rf "$HERALD_CACHE/test-$b"
        started[$b]=1
    fi
done
brokers_log="$(mktemp)"
(
    for b in broker cluster; do
        if [[ ${started[$b]} == 1 ]]; then infra/dev/$b.sh start; fi
    done
) >"$brokers_log" 2>&1 &
brokers_pid=$!
HERALD_TEST_CLUSTER="$(infra/dev/cluster.sh bootstrap)"
export HERALD_TEST_CLUSTER
cleanup() {
    # Whatever still runs in the background (a failed build leaves the
    # brokers' start or the installs going).
    jobs -p | xargs -r kill 2>/dev/null || true
    for b in cluster broker; do
        if [[ ${started[$b]} == 1 ]]; then infra/dev/$b.sh stop || true; fi
    done
    rm -rf "$brokers_log" "${cluster_log:-}" "${installs:-}" "${artifacts:-}" "${tests:-}" "${failed:-}"
}
trap cleanup EXIT

# What the tests drive, installed in the background while the tests build:
# Debian's HAProxy (the load-balancer test) and promtool (the alert rules'
# check), Helm built from the Go module proxy (the chart's render check),
# Chromium and the TypeScript client (npm ci, built) for the browser tests,
# and a virtualenv in the cache (the analytics recipes' confluent-kafka, the
# Python client's test dependencies). Each
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
artifacts="$(mktemp)"
cargo test --workspace --no-run --message-format=json-render-diagnostics "$@" >"$artifacts"
# Every test binary of that build, one line each: its package's folder (where
# cargo would run it), its target's name, the binary. They are run as built,
# not through `cargo test`: cargo would hold the build directory's lock for
# as long as a binary runs, so no two could run at once, and a second cargo
# selecting other packages would build the workspace again.
tests="$(mktemp)"
python3 - "$artifacts" >"$tests" <<'PY'
import json, os, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(os.path.dirname(m["manifest_path"]), m["target"]["name"], m["executable"], sep="\t")
PY
# The test binaries whose target is named $1 (herald's own when several).
binary() { awk -F'\t' -v n="$1" '$2 == n && $1 ~ /crates\/herald$/ { print $3 }' "$tests"; }
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

# What failed, a line each, printed last: CI shows the end of the output.
failed="$(mktemp)"
# run NAME LIMIT DIR BINARY [ARGS...]: one test binary, from DIR as cargo
# would, for at most LIMIT (a hang fails the run instead of stalling it);
# its failed tests (or its timeout) are noted in $failed.
run() {
    local name=$1 limit=$2 dir=$3 out st=0
    out="$(mktemp)"
    (cd "$dir" && timeout --kill-after=30s "$limit" "${@:4}") 2>&1 | tee "$out" || st=$?
    if [[ $st != 0 ]]; then
        if [[ $st == 124 || $st == 137 ]]; then
            echo "$name: timed out after $limit; the last test started, and those running long:" >>"$failed"
            # libtest prints "test NAME ... " when a test starts (one at a
            # time) and names the tests running for over a minute.
            { grep -aoE '^test [^ ]+ \.\.\. ' "$out" | tail -1
              grep -aoE 'test [^ ]+ has been running for over 60 seconds' "$out"
            } | sed 's/^/    /' >>"$failed" || true
        else
            echo "$name: exit $st" >>"$failed"
        fi
        # The failed tests and their panics (the message is the next line).
        grep -aE -A1 "^test .* FAILED$|panicked at" "$out" | grep -av '^--$' |
            head -30 | cut -c1-400 | sed 's/^/    /' >>"$failed" || true
    fi
    rm -f "$out"
    return $st
}

# The cluster's fault suites (they stop, kill and pause its brokers) run one
# test at a time, beside the rest, which use the single broker and brokers
# of their own; bounded, so a hang fails the run instead of stalling it.
cluster_log="$(mktemp)"
(
    st=0
    run cluster 20m crates/herald "$(binary cluster)" --test-threads=1 || st=1
    run chaos 10m crates/herald "$(binary chaos)" --test-threads=1 || st=1
    exit $st
) >"$cluster_log" 2>&1 &
cluster_pid=$!

status=0
echo "test: the TypeScript client's unit tests"
run typescript 5m clients/typescript node --test test/ || status=1
echo "test: the Python client (installed with pip, mypy strict, pytest against a node on the broker)"
"$HERALD_PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall ./clients/python &&
    run mypy 5m clients/python "$HERALD_PYTHON" -m mypy &&
    HERALD_BIN="$CARGO_TARGET_DIR/debug/herald" run pytest 10m clients/python \
        "$HERALD_PYTHON" -m pytest -q -p no:cacheprovider tests/ ||
    status=1
while IFS=$'\t' read -r dir name bin; do
    case "$dir:$name" in
        */crates/herald:cluster | */crates/herald:chaos | */crates/herald:faults) continue ;;
        # herald's end-to-end tests: one binary, each test with its own
        # nodes and topic prefix, so they run in parallel.
        */crates/herald:e2e) args=(--test-threads=4) ;;
        *) args=() ;;
    esac
    echo "test: $name (${dir#"$ROOT"/})"
    run "$name" 15m "$dir" "$bin" ${args[@]+"${args[@]}"} || status=1
done <"$tests"
# The single-broker fault suite kills nodes and restarts its own brokers:
# one test at a time, after the parallel ones.
echo "test: faults"
run faults 15m crates/herald "$(binary faults)" --test-threads=1 || status=1

echo "test: the cluster's fault suites (cluster, chaos)"
wait "$cluster_pid" || status=1
cat "$cluster_log"
if [[ -s $failed ]]; then
    echo "test: FAILED"
    cat "$failed"
    status=1
else
    echo "test: every test passed"
fi
exit $status
