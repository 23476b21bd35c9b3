#!/usr/bin/env bash
# The side-by-side benchmarks of docs/benchmarks.md, each baseline and herald
# in the same command. Starts the dev broker (Apache Kafka, one KRaft node,
# infra/dev/broker.sh) if it is not running and stops it again at the end;
# builds release binaries; starts its own herald node (anonymous `chat`, no
# publish rate limit) and stops it at the end. JSON results go to $OUT.
#
#   loadtest/bench.sh [p1|p2|p2x|p2io|p3|p4|p5|p6|p6k|p7|p7k|in1k|cf|cf-latency|cf-p2|cf-p7|wire|all]   (default all)
#   (wire: bytes on the wire and server CPU per delivered message, herald's
#    JSON frames, its batch frames and Centrifugo's JSON; not part of all)
#   (p3: loadtest/idle-memory.sh, herald, the bare floor and Centrifugo;
#    all: every row, then P1 again on the RF 3 cluster, CLUSTER=1 ... p1)
#   (cf: all three against Centrifugo v6, loadtest/centrifugo/start.sh)
#   RATES=25,50,100,200,400 loadtest/bench.sh sweep|sweep-cf   (throughput and
#                                    p99 against offered load, charts in docs/bench/)
#   SIZE=16384 loadtest/bench.sh cf-p2   (message padding of the cf-* rows, default 100)
#   SUBSCRIBERS=10000 P2_RATE=10 loadtest/bench.sh p2   (all: 1,000 x 100/s and 10,000 x 10/s)
#   STORM_CLIENTS=1000 STORM_JITTER_MS=1000 loadtest/bench.sh p5   (default 10,000 clients, P5's bar)
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
# The build directory, KILL (stopped at exit), start_node, wait_listening.
source loadtest/common.sh
WHAT="${1:-all}"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results}"
BROKERS="${HERALD_TEST_BROKERS:-127.0.0.1:9092}"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
P2_RATE="${P2_RATE:-100}"
# The chat pattern (P7, against the floor and against Centrifugo).
P7_SUBSCRIBERS="${P7_SUBSCRIBERS:-10000}"
P7_CHANNELS="${P7_CHANNELS:-5000}"
P7_PUBLISHERS="${P7_PUBLISHERS:-1000}"
P7_RATE="${P7_RATE:-1000}"
# Comparisons alternate baseline and herald this many pairs (A B A B ...)
# and report the median ratio with its range; every run is judged by the
# strict verifier (loss, duplicates, order, a minimum of acks) and fails
# the script when it is not all of it, once, in order.
PAIRS="${PAIRS:-3}"
# Charts (SVG) go beside docs/benchmarks.md.
PLOTS="${PLOTS:-$ROOT/docs/bench}"
mkdir -p "$OUT" "$PLOTS"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || echo "bench: could not raise the fd limit"
cargo build --release -q -p herald -p herald-loadtest
BIN="$CARGO_TARGET_DIR/release"

FETCH_WAIT="${FETCH_WAIT_MS:-100}"
REPLICATION=()
FLOOR_TOPIC=()
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
# Everything this script starts goes on KILL; the broker it started (if any)
# is stopped last.
stop_started() {
    if ((${#KILL[@]})); then kill "${KILL[@]}" 2>/dev/null || true; fi
    KILL=()
}
finish() {
    stop_started
    if [[ -n "$stop_broker" ]]; then $stop_broker >/dev/null 2>&1 || true; fi
}
trap finish EXIT
if [[ -n "${MOCK:-}" ]]; then
    # librdkafka's in-process mock cluster instead of the dev broker: a broker
    # that is never the bottleneck. It times out CreateTopics, so the topics
    # exist before anything starts.
    "$BIN/herald-loadtest" mock-broker \
        --topics "bench-$$.chat:8,bench-$$.meta:1,bench-$$.cursors:8,bench-$$.control:1,bench-$$.presence:8,loadtest-floor:1" \
        > "$OUT/mock.out" 2>&1 &
    KILL+=($!)
    wait_listening "$OUT/mock.out" "mock broker at "
    BROKERS=$LISTENING
    FLOOR_TOPIC=(--floor-topic loadtest-floor)
    echo "bench: librdkafka mock cluster at $BROKERS"
fi

# start_herald NAME [FLAGS...]: a release herald node on a free port, all
# nodes on the same topics, every limit at its default (queue 1,024 messages
# / 4 MiB per connection, 1,000 publishes/s per connection, 10,000
# connections per IP) unless FLAGS say otherwise; sets PID and NODE_URL.
start_herald() {
    local name=$1
    shift
    start_node "$OUT" "$name" "$BIN/herald" --kafka-brokers "$BROKERS" \
        --topic-prefix "bench-$$." --namespaces chat=8:anonymous --fetch-wait-max-ms "$FETCH_WAIT" \
        ${REPLICATION[@]+"${REPLICATION[@]}"} ${HERALD_ARGS:-} "$@"
}
start_herald herald
URL=$NODE_URL
HERALD_PID=$PID
echo "bench: herald (release) at $URL, broker $BROKERS, fetch.wait.max.ms $FETCH_WAIT, results in $OUT"
LT="$BIN/herald-loadtest"
# plot NAME TITLE: the latency distributions of $OUT/NAME.json as $PLOTS/NAME.svg.
plot() { "$LT" plot --json "$OUT/$1.json" --svg "$PLOTS/$1.svg" --title "$2"; }

# The bare WebSocket floor in its own process, like herald (and the
# generator's open files stay under the limit at 10,000 subscribers); one
# per run of this script, shared by the scenarios that need it.
floor=""
start_ws_floor() {
    if [[ -n $floor ]]; then return; fi
    "$LT" ws-floor-server --listen 127.0.0.1:0 ${FLOOR_FLUSH_EACH:+--flush-each} > "$OUT/wsfloor.out" 2>&1 &
    floor=$!
    KILL+=("$floor")
    wait_listening "$OUT/wsfloor.out" "ws-floor listening on "
    FLOOR_URL=$LISTENING
}

# The floor with Kafka in its path (ws-floor-server --kafka): publishes are
# appended to a fresh topic of 8 partitions and acked when Kafka confirms;
# a consumer tails it and fans out. What herald cannot avoid, without herald.
kfloor=""
start_ws_kafka_floor() {
    if [[ -n $kfloor ]]; then return; fi
    "$LT" ws-floor-server --listen 127.0.0.1:0 --kafka "$BROKERS" --partitions 8 \
        --fetch-wait-max-ms "$FETCH_WAIT" ${FLOOR_FLUSH_EACH:+--flush-each} > "$OUT/wskfloor.out" 2>&1 &
    kfloor=$!
    KILL+=("$kfloor")
    wait_listening "$OUT/wskfloor.out" "ws-floor listening on " ||
        { echo "bench: the Kafka floor did not start"; cat "$OUT/wskfloor.out"; exit 1; }
    KFLOOR_URL=$LISTENING
}

# The Centrifugo peer (loadtest/centrifugo/start.sh: built from the Go
# module proxy into the cache on first use, Redis engine, history and
# recovery on); one per run of this script.
CF_URL=""
start_centrifugo() {
    if [[ -n $CF_URL ]]; then return; fi
    CF_URL="$(OUT="$OUT" loadtest/centrifugo/start.sh | tail -1)"
    KILL+=($(cat "$OUT/centrifugo.pids"))
    [[ -n "$CF_URL" ]] || { echo "bench: centrifugo did not start"; cat "$OUT/centrifugo.err"; exit 1; }
}

# What a row starts (floors, peers, extra nodes) is stopped when the row
# ends, so that nothing of it shares the machine with the rows after it; the
# node every row uses and the broker stay.
ROW_BASE=${#KILL[@]}
end_row() {
    if ((${#KILL[@]} > ROW_BASE)); then
        kill "${KILL[@]:ROW_BASE}" 2>/dev/null || true
        KILL=("${KILL[@]:0:ROW_BASE}")
    fi
    floor=""
    kfloor=""
    CF_URL=""
}

if [[ $WHAT == all || $WHAT == p1 ]]; then
    echo "== P1: end-to-end latency at 200 msg/s for 60 s (12,000 samples per run), 100-byte messages, vs the bare Kafka floor"
    "$LT" vs-kafka --pairs "$PAIRS" --url "$URL" --brokers "$BROKERS" --fetch-wait-max-ms "$FETCH_WAIT" \
        --rate 200 --duration-secs "${P1_SECS:-60}" --size 100 "${FLOOR_TOPIC[@]}" --json "$OUT/p1${MOCK:+-mock}${CLUSTER:+-cluster}.json"
    plot "p1${MOCK:+-mock}${CLUSTER:+-cluster}" "P1: latency at 200 msg/s, herald vs the Kafka floor${CLUSTER:+ (RF 3 cluster)}${MOCK:+ (mock broker)}"
    end_row
fi
if [[ $WHAT == all || $WHAT == p6 ]]; then
    echo "== P6: ingest, closed loop with 64 in flight, vs the bare producer (herald without its per-connection publish rate limit, and a subscriber queue of 65,536 messages / 64 MiB)"
    # The one subscriber takes ~30,000 messages/s: at the default queue of
    # 1,024 messages it is cut as a slow consumer whenever its writer falls
    # 35 ms behind, which the closed loop's opening burst on two busy cores
    # does (measured 2026-12-02: 1,024 queued, none written, cut).
    start_herald herald-p6 --publish-rate 0 --queue-messages 65536 --queue-bytes 67108864
    "$LT" vs-kafka --pairs "$PAIRS" --url "$NODE_URL" --brokers "$BROKERS" --fetch-wait-max-ms "$FETCH_WAIT" \
        --rate 0 --window 64 --duration-secs 15 --size 100 "${FLOOR_TOPIC[@]}" --json "$OUT/p6${MOCK:+-mock}${CLUSTER:+-cluster}.json"
    end_row
fi
if [[ $WHAT == all || $WHAT == p6k ]]; then
    echo "== P6's closed loop (one connection, 64 in flight, one subscriber) vs the WebSocket floor with Kafka in its path"
    start_herald herald-p6k --publish-rate 0 --queue-messages 65536 --queue-bytes 67108864
    start_ws_kafka_floor
    "$LT" vs-ws --pairs "$PAIRS" --url "$NODE_URL" --floor-url "$KFLOOR_URL" --floor-label ws-kafka-floor \
        --subscribers 1 --channels 1 --publishers 1 --rate 0 --window 64 \
        --duration-secs 15 --size 100 --drain-secs 30 --json "$OUT/p6k.json"
    end_row
fi
if [[ $WHAT == all || $WHAT == p4 ]]; then
    P4_MESSAGES="${P4_MESSAGES:-10000}"
    echo "== P4: resume of a client $P4_MESSAGES messages behind on the node that published them, vs reading them from Kafka"
    "$LT" resume --url "$URL" --brokers "$BROKERS" --topic-prefix "bench-$$." \
        --messages "$P4_MESSAGES" --size 100 --fetch-wait-max-ms "$FETCH_WAIT" --json "$OUT/p4.json"
    echo "== P4 beyond the ring: $((P4_MESSAGES * 2)) behind (herald's default ring keeps 10,000 per partition)"
    "$LT" resume --url "$URL" --brokers "$BROKERS" --topic-prefix "bench-$$." \
        --messages "$((P4_MESSAGES * 2))" --size 100 --fetch-wait-max-ms "$FETCH_WAIT" --json "$OUT/p4-beyond-ring.json"
    for i in $(seq 1 "$PAIRS"); do
        echo "== P4 cold ($i of $PAIRS): $P4_MESSAGES behind, resumed on a node started after they were published"
        start_herald "herald-cold-$i"
        "$LT" resume --url "$URL" --resume-url "$NODE_URL" --brokers "$BROKERS" --topic-prefix "bench-$$." \
            --messages "$P4_MESSAGES" --size 100 --fetch-wait-max-ms "$FETCH_WAIT" --json "$OUT/p4-cold-$i.json"
        kill "$PID"
    done
    end_row
fi
# p2 SUBSCRIBERS RATE: one P2 comparison against the bare WebSocket floor.
p2() {
    echo "== P2: fan-out, one channel, $1 subscribers, $2 msg/s, vs the bare WebSocket floor"
    start_ws_floor
    "$LT" vs-ws --pairs "$PAIRS" --url "$URL" --floor-url "$FLOOR_URL" --subscribers "$1" --channels 1 --publishers 1 \
        --rate "$2" --duration-secs 10 --size 100 --drain-secs "${P2_DRAIN:-30}" \
        --source-ips 127.0.0.1-127.0.0.4 --json "$OUT/p2-$1-$2.json"
    plot "p2-$1-$2" "P2: $1 subscribers, $2 msg/s, herald vs the WebSocket floor"
}
if [[ $WHAT == p2 ]]; then
    p2 "$SUBSCRIBERS" "$P2_RATE"
elif [[ $WHAT == all ]]; then
    # Both shapes of the summary table: 1,000 x 100/s and the bar's 10,000.
    p2 "$SUBSCRIBERS" "$P2_RATE"
    p2 10000 10
    end_row
fi
if [[ $WHAT == all || $WHAT == p2x ]]; then
    echo "== P2 across two edges: $SUBSCRIBERS subscribers on edge A, the publisher on edge B, vs everyone on edge A"
    start_herald herald-edge-b
    "$LT" vs-edges --pairs "$PAIRS" --url "$URL" --url-b "$NODE_URL" --subscribers "$SUBSCRIBERS" --channels 1 \
        --publishers 1 --rate "$P2_RATE" --duration-secs 10 --size 100 --drain-secs "${P2_DRAIN:-30}" \
        --source-ips 127.0.0.1-127.0.0.4 --json "$OUT/p2x-$SUBSCRIBERS-$P2_RATE.json"
    plot "p2x-$SUBSCRIBERS-$P2_RATE" "P2 across two edges: $SUBSCRIBERS subscribers on A, publisher on B, vs all on A"
    end_row
fi
if [[ $WHAT == all || $WHAT == p7 ]]; then
    echo "== P7 (chat-like): $P7_SUBSCRIBERS subscribers on $P7_CHANNELS channels, $P7_PUBLISHERS publishing connections, $P7_RATE msg/s in all, vs the bare WebSocket floor"
    start_ws_floor
    "$LT" vs-ws --pairs "$PAIRS" --url "$URL" --floor-url "$FLOOR_URL" --subscribers "$P7_SUBSCRIBERS" \
        --channels "$P7_CHANNELS" --publishers "$P7_PUBLISHERS" --rate "$P7_RATE" --duration-secs 20 --size 100 \
        --drain-secs 30 --source-ips 127.0.0.1-127.0.0.8 --json "$OUT/p7-$P7_SUBSCRIBERS-$P7_CHANNELS-$P7_PUBLISHERS.json"
    plot "p7-$P7_SUBSCRIBERS-$P7_CHANNELS-$P7_PUBLISHERS" "P7 chat: $P7_SUBSCRIBERS subscribers on $P7_CHANNELS channels, herald vs the WebSocket floor"
    end_row
fi
if [[ $WHAT == all || $WHAT == p7 || $WHAT == p7k ]]; then
    echo "== P7 (chat-like) vs the floor with Kafka in its path (append, ack on confirm, consumer fan-out)"
    start_ws_kafka_floor
    "$LT" vs-ws --pairs "$PAIRS" --url "$URL" --floor-url "$KFLOOR_URL" --floor-label ws-kafka-floor \
        --subscribers "$P7_SUBSCRIBERS" --channels "$P7_CHANNELS" --publishers "$P7_PUBLISHERS" --rate "$P7_RATE" \
        --duration-secs 20 --size 100 --drain-secs 30 --source-ips 127.0.0.1-127.0.0.8 \
        --json "$OUT/p7k-$P7_SUBSCRIBERS-$P7_CHANNELS-$P7_PUBLISHERS.json"
    plot "p7k-$P7_SUBSCRIBERS-$P7_CHANNELS-$P7_PUBLISHERS" "P7 chat: $P7_SUBSCRIBERS subscribers on $P7_CHANNELS channels, herald vs the WebSocket floor with Kafka"
    end_row
fi
if [[ $WHAT == all || $WHAT == in1k ]]; then
    echo "== Ingest from 1,000 connections (closed loop, one publish in flight each, 1,000 subscribers on 1,000 channels) vs the floor with Kafka in its path"
    start_ws_kafka_floor
    "$LT" vs-ws --pairs "$PAIRS" --url "$URL" --floor-url "$KFLOOR_URL" --floor-label ws-kafka-floor \
        --subscribers 1000 --channels 1000 --publishers 1000 --rate 0 --window 1 \
        --duration-secs 15 --size 100 --drain-secs 30 --source-ips 127.0.0.1-127.0.0.8 \
        --json "$OUT/in1k.json"
    plot in1k "Ingest from 1,000 connections, herald vs the WebSocket floor with Kafka"
    end_row
fi
if [[ $WHAT == all || $WHAT == p2io ]]; then
    echo "== P2 vs the peer: Socket.IO 4 (Redis Streams adapter, state recovery), $SUBSCRIBERS subscribers, $P2_RATE msg/s"
    SIO_URL="$(OUT="$OUT" loadtest/socketio/start.sh | tail -1)"
    KILL+=($(cat "$OUT/socketio.pids"))
    [[ -n "$SIO_URL" ]] || { echo "bench: socket.io did not start"; cat "$OUT/socketio.err"; exit 1; }
    "$LT" vs-socketio --pairs "$PAIRS" --url "$URL" --sio-url "$SIO_URL" --subscribers "$SUBSCRIBERS" --channels 1 \
        --publishers 1 --rate "$P2_RATE" --duration-secs 10 --size 100 --drain-secs "${P2_DRAIN:-30}" \
        --source-ips 127.0.0.1-127.0.0.4 --json "$OUT/p2io-$SUBSCRIBERS-$P2_RATE.json"
    plot "p2io-$SUBSCRIBERS-$P2_RATE" "P2: $SUBSCRIBERS subscribers, $P2_RATE msg/s, herald vs Socket.IO"
    end_row
fi
if [[ $WHAT == all || $WHAT == p3 ]]; then
    # Before any Centrifugo of this script starts: idle-memory.sh starts its
    # own on the same ports, and measures each server in a process of its own.
    echo "== P3: memory per idle subscribed connection (${P3_CONNECTIONS:-5000} connections, 100 channels), herald, the bare WebSocket floor, Centrifugo"
    OUT="$OUT" loadtest/idle-memory.sh "${P3_CONNECTIONS:-5000}" 100 | tee "$OUT/p3.txt"
    end_row
fi
if [[ $WHAT == all || $WHAT == cf || $WHAT == cf-latency ]]; then
    echo "== vs Centrifugo: end-to-end latency, one subscriber, 200 msg/s for ${P1_SECS:-60} s, 100-byte messages"
    start_centrifugo
    "$LT" vs-centrifugo --pairs "$PAIRS" --url "$URL" --cf-url "$CF_URL" --subscribers 1 --channels 1 \
        --publishers 1 --rate 200 --duration-secs "${P1_SECS:-60}" --size "${SIZE:-100}" --drain-secs 10 \
        --json "$OUT/cf-latency-${SIZE:-100}.json"
    plot "cf-latency-${SIZE:-100}" "Latency at 200 msg/s, ${SIZE:-100} B: herald vs Centrifugo"
    end_row
fi
if [[ $WHAT == all || $WHAT == cf || $WHAT == cf-p2 ]]; then
    echo "== vs Centrifugo, P2: fan-out, one channel, $SUBSCRIBERS subscribers, $P2_RATE msg/s, ${SIZE:-100}-byte messages"
    start_centrifugo
    "$LT" vs-centrifugo --pairs "$PAIRS" --url "$URL" --cf-url "$CF_URL" --subscribers "$SUBSCRIBERS" --channels 1 \
        --publishers 1 --rate "$P2_RATE" --duration-secs 10 --size "${SIZE:-100}" --drain-secs "${P2_DRAIN:-30}" \
        --source-ips 127.0.0.1-127.0.0.4 --json "$OUT/cf-p2-$SUBSCRIBERS-$P2_RATE-${SIZE:-100}.json"
    plot "cf-p2-$SUBSCRIBERS-$P2_RATE-${SIZE:-100}" "P2: $SUBSCRIBERS subscribers, $P2_RATE msg/s, ${SIZE:-100} B: herald vs Centrifugo"
    end_row
fi
if [[ $WHAT == all || $WHAT == cf || $WHAT == cf-p7 ]]; then
    echo "== vs Centrifugo, P7 (chat-like): $P7_SUBSCRIBERS subscribers on $P7_CHANNELS channels, $P7_PUBLISHERS publishing connections, $P7_RATE msg/s"
    start_centrifugo
    "$LT" vs-centrifugo --pairs "$PAIRS" --url "$URL" --cf-url "$CF_URL" --subscribers "$P7_SUBSCRIBERS" \
        --channels "$P7_CHANNELS" --publishers "$P7_PUBLISHERS" --rate "$P7_RATE" --duration-secs 20 --size 100 \
        --drain-secs 30 --source-ips 127.0.0.1-127.0.0.8 --json "$OUT/cf-p7-$P7_SUBSCRIBERS-$P7_CHANNELS-$P7_PUBLISHERS.json"
    plot "cf-p7-$P7_SUBSCRIBERS-$P7_CHANNELS-$P7_PUBLISHERS" "P7 chat: $P7_SUBSCRIBERS subscribers on $P7_CHANNELS channels, herald vs Centrifugo"
    end_row
fi
if [[ $WHAT == wire ]]; then
    # One channel, $WIRE_SUBS subscribers, $WIRE_RATE msg/s for 10 s, a
    # 100-byte and a 1,500-byte payload; the modes in turn, $PAIRS rounds,
    # the order reversed every other round. Bytes are the subscribers' text
    # frames with their WebSocket headers; CPU is the server process's
    # (/proc/PID/stat) over the same span.
    WIRE_SUBS="${WIRE_SUBS:-200}"
    WIRE_RATE="${WIRE_RATE:-200}"
    start_centrifugo
    CF_PID="$(tail -1 "$OUT/centrifugo.pids")"
    modes=(herald herald-batch centrifugo)
    for size in 100 1500; do
        for ((round = 0; round < PAIRS; round++)); do
            order=("${modes[@]}")
            if ((round % 2)); then order=(centrifugo herald-batch herald); fi
            for mode in "${order[@]}"; do
                case $mode in
                    herald) args=(--url "$URL" --server-pid "$HERALD_PID") ;;
                    herald-batch) args=(--url "$URL?batch=true" --server-pid "$HERALD_PID") ;;
                    centrifugo) args=(--proto centrifugo --url "$CF_URL" --server-pid "$CF_PID") ;;
                esac
                echo "== wire: $mode, ${size}-byte payload, round $((round + 1))"
                "$LT" ws "${args[@]}" --subscribers "$WIRE_SUBS" --channels 1 --publishers 1 \
                    --rate "$WIRE_RATE" --duration-secs 10 --size "$size" --drain-secs 10 \
                    --json "$OUT/wire-$mode-$size-$round.json" |
                    grep -E "^(deliveries|wire|server CPU|lost|duplicated)"
            done
        done
    done
    end_row
fi
if [[ $WHAT == all || $WHAT == sweep || $WHAT == sweep-cf ]]; then
    # Throughput and p99 against offered load, one channel, $SUBSCRIBERS
    # subscribers, each rate a point of $PAIRS baseline/herald pairs (order
    # alternating), each side drawn at its median.
    RATES="${RATES:-25,50,100,200,400}"
    if [[ $WHAT != sweep-cf ]]; then
        echo "== sweep: $SUBSCRIBERS subscribers, publishes/s $RATES, herald vs the WebSocket floor"
        start_ws_floor
        "$LT" sweep --pairs "$PAIRS" --url "$URL" --base-url "$FLOOR_URL" --base-label ws-floor --rates "$RATES" \
            --subscribers "$SUBSCRIBERS" --channels 1 --publishers 1 --duration-secs 10 --size "${SIZE:-100}" \
            --drain-secs "${P2_DRAIN:-30}" --source-ips 127.0.0.1-127.0.0.4 \
            --json "$OUT/sweep-ws-$SUBSCRIBERS.json" --svg-prefix "$PLOTS/sweep-ws-$SUBSCRIBERS"
    fi
    if [[ $WHAT != sweep ]]; then
        echo "== sweep: $SUBSCRIBERS subscribers, publishes/s $RATES, herald vs Centrifugo"
        start_centrifugo
        "$LT" sweep --pairs "$PAIRS" --url "$URL" --base-url "$CF_URL" --base-proto centrifugo --base-label centrifugo \
            --rates "$RATES" --subscribers "$SUBSCRIBERS" --channels 1 --publishers 1 --duration-secs 10 \
            --size "${SIZE:-100}" --drain-secs "${P2_DRAIN:-30}" --source-ips 127.0.0.1-127.0.0.4 \
            --json "$OUT/sweep-cf-$SUBSCRIBERS.json" --svg-prefix "$PLOTS/sweep-cf-$SUBSCRIBERS"
    fi
    end_row
fi
if [[ $WHAT == all || $WHAT == p5 ]]; then
    STORM_CLIENTS="${STORM_CLIENTS:-10000}"
    echo "== P5: reconnect storm, $STORM_CLIENTS clients on edge A, A killed, all resume on edge B"
    start_herald herald-a
    srv_a=$PID
    disown "$srv_a" 2>/dev/null || true   # its SIGKILL is the point, not news
    "$LT" storm --url-a "$NODE_URL" --pid-a "$srv_a" --url-b "$URL" \
        --subscribers "$STORM_CLIENTS" --channels 10 --rate 50 --before-secs 5 --after-secs 15 \
        --jitter-ms "${STORM_JITTER_MS:-0}" --source-ips 127.0.0.1-127.0.0.4 \
        --json "$OUT/p5-$STORM_CLIENTS-${STORM_JITTER_MS:-0}.json"
    echo "== P5 cold: the same, but edge B follows none of the channels when the storm arrives"
    start_herald herald-a-cold
    srv_a=$PID
    url_a=$NODE_URL
    disown "$srv_a" 2>/dev/null || true
    start_herald herald-b-cold
    "$LT" storm --url-a "$url_a" --pid-a "$srv_a" --url-b "$NODE_URL" --cold \
        --subscribers "$STORM_CLIENTS" --channels 10 --rate 50 --before-secs 5 --after-secs 15 \
        --jitter-ms "${STORM_JITTER_MS:-0}" --source-ips 127.0.0.1-127.0.0.4 \
        --json "$OUT/p5-cold-$STORM_CLIENTS-${STORM_JITTER_MS:-0}.json"
    end_row
fi
if [[ $WHAT == all && -z ${CLUSTER:-} && -z ${MOCK:-} ]]; then
    # The summary's P1 row on the RF 3 cluster: everything above stopped
    # first (the single broker stays up, idle), then this script again.
    echo "== P1 on the three-broker cluster (RF 3, min.insync.replicas=2)"
    stop_started
    CLUSTER=1 OUT="$OUT" PLOTS="$PLOTS" loadtest/bench.sh p1
fi
