#!/usr/bin/env bash
# A/B of two herald builds on the cold resume scenarios, alternating
# (A B A B ...), on the dev broker (started if not running):
#   p4: a client N behind resumes on a node started after the publishes
#       (herald-loadtest resume --resume-url), against the raw Kafka read;
#   p5: a reconnect storm of STORM_CLIENTS clients onto an edge that follows
#       none of the partitions (herald-loadtest storm --cold).
# The cold node's metrics are kept after each P4 run
# (herald_hub_ring_fill_seconds and the rest).
#
#   loadtest/ab-cold.sh p4|p5 /path/to/herald-a /path/to/herald-b [PAIRS]
#   (P4_MESSAGES=10000, STORM_CLIENTS=10000 by default; PAIRS=3)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The build directory, KILL (stopped at exit), start_node, wait_listening.
source loadtest/common.sh
MODE=${1:?p4 or p5}; A=${2:?herald build A}; B=${3:?herald build B}; PAIRS=${4:-3}
cargo build --release -q -p herald-loadtest || exit 1
LT="$CARGO_TARGET_DIR/release/herald-loadtest"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
BROKERS="${HERALD_TEST_BROKERS:-127.0.0.1:9092}"
PFX="ab-$$."
ulimit -n 65536 2>/dev/null || true
if [[ -z "${HERALD_TEST_BROKERS:-}" ]]; then ensure_broker; fi
# start BIN NAME: a node on a free port; sets PID and NODE_URL.
start() {
    start_node "$OUT" "$2" "$1" --kafka-brokers "$BROKERS" --topic-prefix "$PFX" \
        --namespaces chat=8:anonymous --fetch-wait-max-ms 100
}
start "$B" publisher
URL=$NODE_URL
for i in $(seq 1 "$PAIRS"); do
    for bin in "$A" "$B"; do
        tag="$(basename "$bin")-$i"
        if [[ $MODE == p4 ]]; then
            start "$bin" "cold-$tag"
            "$LT" resume --url "$URL" --resume-url "$NODE_URL" --brokers "$BROKERS" --topic-prefix "$PFX" \
                --messages "${P4_MESSAGES:-10000}" --size 100 --fetch-wait-max-ms 100 \
                --json "$OUT/p4-$tag.json" 2>&1 | tail -1 | sed "s/^/$tag: /"
            curl -s "$(echo "$NODE_URL" | sed 's|^ws://|http://|; s|/ws$||')/metrics" > "$OUT/metrics-$tag.txt"
            kill "$PID"
        else
            start "$bin" "a-$tag"; pa=$PID; ua=$NODE_URL
            disown "$pa" 2>/dev/null || true   # its SIGKILL is the point
            start "$bin" "b-$tag"
            "$LT" storm --url-a "$ua" --pid-a "$pa" --url-b "$NODE_URL" --cold \
                --subscribers "${STORM_CLIENTS:-10000}" --channels 10 --rate 50 --before-secs 5 \
                --after-secs 15 --source-ips 127.0.0.1-127.0.0.4 --json "$OUT/p5-$tag.json" 2>&1 \
                | grep -E "all re|lost" | sed "s/^/$tag: /"
            kill "$PID"
        fi
    done
done
echo "ab-cold: results in $OUT"
