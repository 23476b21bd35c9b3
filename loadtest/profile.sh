#!/usr/bin/env bash
# Where herald's time and heap allocations go on the hot paths, on Apache
# Kafka (infra/dev/broker.sh, started if not running):
# - allocations per publish: P6's closed loop (one publisher, 64 in
#   flight, one subscriber), Rust heap allocations counted by a herald built
#   with `--features count-allocs`, minus the one delivery each publish has;
# - allocations per delivered message per subscriber: one channel, 200
#   subscribers, 100 publishes/s;
# - herald's CPU per 1,000 acked publishes (from /proc/PID/stat) and, with
#   PERF=1, a `perf` profile of the closed loop (the top symbols, and the
#   share of the allocator, the kernel and librdkafka).
#
#   loadtest/profile.sh            (DUR=12 seconds per scenario)
#   PERF=1 loadtest/profile.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The build directory, KILL (stopped at exit), start_node, wait_listening.
source loadtest/common.sh
BROKERS="${HERALD_TEST_BROKERS:-127.0.0.1:9092}"
[[ -n "${HERALD_TEST_BROKERS:-}" ]] || ensure_broker
DUR="${DUR:-12}"
cargo build --release -q -p herald-loadtest
# Its own build: the counting allocator is not in the normal one.
cargo build --release -q -p herald --features count-allocs
BIN="$CARGO_TARGET_DIR/release"
OUT="$(mktemp -d)"
start_node "$OUT" herald "$BIN/herald" --kafka-brokers "$BROKERS" --topic-prefix "profile-$$." \
    --namespaces chat=8:anonymous --publish-rate 0 --queue-messages 65536 --queue-bytes 67108864
srv=$PID
METRICS="$(echo "${NODE_URL%/ws}" | sed 's#ws://#http://#')/metrics"
metric() { curl -s "$METRICS" | awk -v m="$1" '$1 == m {print $2}'; }
# run NAME LOAD...: one scenario; sets ALLOCS, ACKS, DELIVERED, TICKS (deltas).
run() {
    local name=$1 a0 k0 t0 d
    shift
    sleep 0.2
    a0=$(metric herald_allocations); k0=$(metric herald_publish_acks_total); t0=$(ticks "$srv")
    "$BIN/herald-loadtest" ws --url "$NODE_URL" --size 100 --duration-secs "$DUR" "$@" \
        --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1 || { cat "$OUT/$name.txt"; exit 1; }
    sleep 0.2
    ALLOCS=$(($(metric herald_allocations) - a0)); ACKS=$(($(metric herald_publish_acks_total) - ${k0:-0}))
    TICKS=$(($(ticks "$srv") - t0))
    DELIVERED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["reports"][0]["delivered"])' "$OUT/$name.json")
    d=$(grep -E '^publishes' "$OUT/$name.txt")
    echo "$name: $d; $DELIVERED delivered"
}
# Warm-up: the topics, the producer's connections, the tail.
"$BIN/herald-loadtest" ws --url "$NODE_URL" --size 100 --duration-secs 3 --subscribers 1 --channels 1 --publishers 1 --rate 0 --window 64 >/dev/null 2>&1 || true

run fanout --subscribers 200 --channels 1 --publishers 1 --rate 100
per_delivery=$(awk -v a="$ALLOCS" -v d="$DELIVERED" -v k="$ACKS" 'BEGIN {printf "%.2f", a / d}')
run closed --subscribers 1 --channels 1 --publishers 1 --rate 0 --window 64
hz=$(getconf CLK_TCK)
echo "allocations per delivered message per subscriber: $per_delivery (200 subscribers; the publish's own share included, 1/200 of it)"
awk -v a="$ALLOCS" -v k="$ACKS" -v d="$DELIVERED" -v pd="$per_delivery" -v t="$TICKS" -v hz="$hz" 'BEGIN {
    printf "allocations per publish: %.2f (%.2f per acked publish with its one delivery, less %.2f)\n", a / k - pd * d / k, a / k, pd * d / k
    printf "herald CPU per 1,000 acked publishes (closed loop, one subscriber): %.1f ms\n", t * 1000 / hz / (k / 1000)
}'
if [[ -n "${PERF:-}" ]]; then
    perf record -F 1999 -o "$OUT/perf.data" -p "$srv" -- sleep "$DUR" >/dev/null 2>&1 &
    pp=$!
    "$BIN/herald-loadtest" ws --url "$NODE_URL" --size 100 --duration-secs "$DUR" --subscribers 1 --channels 1 --publishers 1 --rate 0 --window 64 >/dev/null 2>&1 || true
    wait "$pp" || true
    echo "== perf: share of herald's samples by library"
    perf report -i "$OUT/perf.data" --no-children --sort dso -g none 2>/dev/null | grep -E '^ +[0-9]' | head -6
    echo "== perf: top symbols"
    perf report -i "$OUT/perf.data" --no-children --sort dso,symbol -g none 2>/dev/null | grep -E '^ +[0-9]' | head -${TOP:-30} | cut -c1-150
fi
