#!/usr/bin/env bash
# The side-by-side benchmarks of docs/benchmarks.md, each baseline and herald
# in the same command. Starts the dev broker (Apache Kafka, one KRaft node,
# infra/dev/broker.sh) if it is not running and stops it again at the end;
# builds release binaries; starts its own herald node (anonymous `chat`, no
# publish rate limit) and stops it at the end. JSON results go to $OUT.
#
#   loadtest/bench.sh [p1|p2|p2io|p4|p5|p6|p7|all]   (default all)
#   SUBSCRIBERS=10000 loadtest/bench.sh p2
#   STORM_CLIENTS=10000 STORM_JITTER_MS=1000 loadtest/bench.sh p5
#   CLUSTER=1 loadtest/bench.sh p1  (the three-broker cluster, infra/dev/cluster.sh:
#                                    herald's topics and the floor's with RF 3,
#                                    min.insync.replicas=2)
#   MOCK=1 loadtest/bench.sh p1     (librdkafka's mock cluster as the broker: never
#                                    the bottleneck, not durable; label such rows)
#   FETCH_WAIT_MS=5 loadtest/bench.sh p1   (fetch.wait.max.ms of herald and the
#                                    floor alike; default herald's default, 100)
#   HERALD_ARGS="--recent-messages 100" loadtest/bench.sh p4   (extra flags for herald)
#   PAIRS=5 loadtest/bench.sh p2    (baseline/herald pairs per comparison, default 3)
#   P1_SECS=60                      (P1's duration per run: 12,000 latency samples at 200/s)
#   P2_DRAIN=150 SUBSCRIBERS=10000 P2_RATE=40 loadtest/bench.sh p2io   (a slow peer needs time to drain)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HERALD_CACHE:-$HOME/.cache/herald}/target}"
WHAT="${1:-all}"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results}"
BROKERS="${HERALD_TEST_BROKERS:-127.0.0.1:9092}"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
P2_RATE="${P2_RATE:-100}"
# Comparisons alternate baseline and herald this many pairs (A B A B ...)
# and report the median ratio with its range; every run is judged by the
# strict verifier (loss, duplicates, order, a minimum of acks) and fails
# the script when it is not all of it, once, in order.
PAIRS="${PAIRS:-3}"
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || echo "bench: could not raise the fd limit"
cargo build --release -q -p herald -p herald-loadtest
BIN="$CARGO_TARGET_DIR/release"

FETCH_WAIT="${FETCH_WAIT_MS:-100}"
REPLICATION=()
FLOOR_TOPIC=()
mock=""
stop_broker=""
if [[ -n "${CLUSTER:-}" ]]; then
    if ! infra/dev/cluster.sh status >/dev/null 2>&1; then
        infra/dev/cluster.sh start
        stop_broker="infra/dev/cluster.sh stop"
    fi
    BROKERS="$(infra/dev/cluster.sh bootstrap)"
    REPLICATION=(--replication 3 --min-insync-replicas 2)
    echo "bench: three-broker Kafka cluster at $BROKERS (RF 3, min.insync.replicas=2)"
elif [[ -z "${MOCK:-}" && -z "${HERALD_TEST_BROKERS:-}" ]]; then
    if ! infra/dev/broker.sh status >/dev/null 2>&1; then
        infra/dev/broker.sh start
        stop_broker="infra/dev/broker.sh stop"
    fi
    echo "bench: Apache Kafka (one KRaft node) at $BROKERS"
fi
if [[ -n "$stop_broker" ]]; then
    # The broker outlives this script's traps' kill lists below; stop it last.
    finish() { $stop_broker >/dev/null 2>&1 || true; }
else
    finish() { :; }
fi
trap finish EXIT
if [[ -n "${MOCK:-}" ]]; then
    # librdkafka's in-process mock cluster instead of the dev broker: a broker
    # that is never the bottleneck. It times out CreateTopics, so the topics
    # exist before anything starts.
    "$BIN/herald-loadtest" mock-broker \
        --topics "bench-$$.chat:8,bench-$$.meta:1,bench-$$.cursors:8,loadtest-floor:1" \
        > "$OUT/mock.out" 2>&1 &
    mock=$!
    for _ in $(seq 1 50); do grep -q "mock broker at" "$OUT/mock.out" && break; sleep 0.1; done
    BROKERS="$(sed -n 's/^mock broker at //p' "$OUT/mock.out")"
    FLOOR_TOPIC=(--floor-topic loadtest-floor)
    echo "bench: librdkafka mock cluster at $BROKERS"
fi

# start_herald NAME: a release herald node on a free port, all nodes on the
# same topics; sets PID and NODE_URL.
start_herald() {
    "$BIN/herald" serve --listen 127.0.0.1:0 --kafka-brokers "$BROKERS" \
        --topic-prefix "bench-$$." --namespaces chat=8:anonymous --fetch-wait-max-ms "$FETCH_WAIT" \
        "${REPLICATION[@]}" ${HERALD_ARGS:-} \
        --publish-rate 0 --max-connections-per-ip 1000000 --queue-messages 100000 \
        --queue-bytes 67108864 > "$OUT/$1.out" 2> "$OUT/$1.err" &
    PID=$!
    for _ in $(seq 1 300); do grep -q listening "$OUT/$1.out" && break; sleep 0.1; done
    NODE_URL="$(sed -n 's/^herald listening on //p' "$OUT/$1.out")"
    [[ -n "$NODE_URL" ]] || { echo "bench: herald ($1) did not start"; cat "$OUT/$1.err"; exit 1; }
}
start_herald herald
srv=$PID
URL=$NODE_URL
trap 'kill $srv $mock 2>/dev/null || true; finish' EXIT
echo "bench: herald (release) at $URL, broker $BROKERS, fetch.wait.max.ms $FETCH_WAIT, results in $OUT"
LT="$BIN/herald-loadtest"

# The bare WebSocket floor in its own process, like herald (and the
# generator's open files stay under the limit at 10,000 subscribers); one
# per run of this script, shared by the scenarios that need it.
floor=""
start_ws_floor() {
    if [[ -n $floor ]]; then return; fi
    "$LT" ws-floor-server --listen 127.0.0.1:0 > "$OUT/wsfloor.out" 2>&1 &
    floor=$!
    trap 'kill $srv $floor $mock 2>/dev/null || true; finish' EXIT
    for _ in $(seq 1 50); do grep -q "ws-floor listening" "$OUT/wsfloor.out" && break; sleep 0.1; done
    FLOOR_URL="$(sed -n 's/^ws-floor listening on //p' "$OUT/wsfloor.out")"
}

if [[ $WHAT == all || $WHAT == p1 ]]; then
    echo "== P1: end-to-end latency at 200 msg/s for 60 s (12,000 samples per run), 100-byte messages, vs the bare Kafka floor"
    "$LT" vs-kafka --pairs "$PAIRS" --url "$URL" --brokers "$BROKERS" --fetch-wait-max-ms "$FETCH_WAIT" \
        --rate 200 --duration-secs "${P1_SECS:-60}" --size 100 "${FLOOR_TOPIC[@]}" --json "$OUT/p1${MOCK:+-mock}${CLUSTER:+-cluster}.json"
fi
if [[ $WHAT == all || $WHAT == p6 ]]; then
    echo "== P6: ingest, closed loop with 64 in flight, vs the bare producer"
    "$LT" vs-kafka --pairs "$PAIRS" --url "$URL" --brokers "$BROKERS" --fetch-wait-max-ms "$FETCH_WAIT" \
        --rate 0 --window 64 --duration-secs 15 --size 100 "${FLOOR_TOPIC[@]}" --json "$OUT/p6${MOCK:+-mock}${CLUSTER:+-cluster}.json"
fi
if [[ $WHAT == all || $WHAT == p4 ]]; then
    echo "== P4: resume of a client 10,000 messages behind, vs reading them from Kafka"
    "$LT" resume --url "$URL" --brokers "$BROKERS" --topic-prefix "bench-$$." \
        --messages "${P4_MESSAGES:-10000}" --size 100 --fetch-wait-max-ms "$FETCH_WAIT" --json "$OUT/p4.json"
fi
if [[ $WHAT == all || $WHAT == p2 ]]; then
    echo "== P2: fan-out, one channel, $SUBSCRIBERS subscribers, $P2_RATE msg/s, vs the bare WebSocket floor"
    start_ws_floor
    "$LT" vs-ws --pairs "$PAIRS" --url "$URL" --floor-url "$FLOOR_URL" --subscribers "$SUBSCRIBERS" --channels 1 --publishers 1 \
        --rate "$P2_RATE" --duration-secs 10 --size 100 --drain-secs "${P2_DRAIN:-30}" \
        --source-ips 127.0.0.1-127.0.0.4 --json "$OUT/p2-$SUBSCRIBERS-$P2_RATE.json"
fi
if [[ $WHAT == all || $WHAT == p7 ]]; then
    P7_SUBSCRIBERS="${P7_SUBSCRIBERS:-10000}"
    P7_CHANNELS="${P7_CHANNELS:-5000}"
    P7_PUBLISHERS="${P7_PUBLISHERS:-1000}"
    P7_RATE="${P7_RATE:-1000}"
    echo "== P7 (chat-like): $P7_SUBSCRIBERS subscribers on $P7_CHANNELS channels, $P7_PUBLISHERS publishing connections, $P7_RATE msg/s in all, vs the bare WebSocket floor"
    start_ws_floor
    "$LT" vs-ws --pairs "$PAIRS" --url "$URL" --floor-url "$FLOOR_URL" --subscribers "$P7_SUBSCRIBERS" \
        --channels "$P7_CHANNELS" --publishers "$P7_PUBLISHERS" --rate "$P7_RATE" --duration-secs 20 --size 100 \
        --drain-secs 30 --source-ips 127.0.0.1-127.0.0.8 --json "$OUT/p7-$P7_SUBSCRIBERS-$P7_CHANNELS-$P7_PUBLISHERS.json"
fi
if [[ $WHAT == all || $WHAT == p2io ]]; then
    echo "== P2 vs the peer: Socket.IO 4 (Redis Streams adapter, state recovery), $SUBSCRIBERS subscribers, $P2_RATE msg/s"
    SIO_URL="$(OUT="$OUT" loadtest/socketio/start.sh | tail -1)"
    trap 'kill $srv $mock $(cat "$OUT/socketio.pids") 2>/dev/null || true; finish' EXIT
    [[ -n "$SIO_URL" ]] || { echo "bench: socket.io did not start"; cat "$OUT/socketio.err"; exit 1; }
    "$LT" vs-socketio --pairs "$PAIRS" --url "$URL" --sio-url "$SIO_URL" --subscribers "$SUBSCRIBERS" --channels 1 \
        --publishers 1 --rate "$P2_RATE" --duration-secs 10 --size 100 --drain-secs "${P2_DRAIN:-30}" \
        --source-ips 127.0.0.1-127.0.0.4 --json "$OUT/p2io-$SUBSCRIBERS-$P2_RATE.json"
fi
if [[ $WHAT == all || $WHAT == p5 ]]; then
    STORM_CLIENTS="${STORM_CLIENTS:-1000}"
    echo "== P5: reconnect storm, $STORM_CLIENTS clients on edge A, A killed, all resume on edge B"
    start_herald herald-a
    srv_a=$PID
    disown "$srv_a" 2>/dev/null || true   # its SIGKILL is the point, not news
    trap 'kill $srv $srv_a $mock 2>/dev/null || true; finish' EXIT
    "$LT" storm --url-a "$NODE_URL" --pid-a "$srv_a" --url-b "$URL" \
        --subscribers "$STORM_CLIENTS" --channels 10 --rate 50 --before-secs 5 --after-secs 15 \
        --jitter-ms "${STORM_JITTER_MS:-0}" --source-ips 127.0.0.1-127.0.0.4 \
        --json "$OUT/p5-$STORM_CLIENTS-${STORM_JITTER_MS:-0}.json"
fi
