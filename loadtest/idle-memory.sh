#!/usr/bin/env bash
# P3: server memory per idle *subscribed* connection, for
# herald (release, every limit at its default), the bare WebSocket floor and
# Centrifugo v6 (loadtest/centrifugo/start.sh), one after the other in the
# same run. `herald-loadtest idle` opens N connections, subscribes each to one
# of C channels, publishes one message per channel and waits until every
# connection received it, then lets them idle (answering pings) for HOLD
# seconds, several ping intervals (herald 20 s, Centrifugo 25 s), in two
# halves: N/2 connections, the RSS, then N/2 more, the RSS. Printed: the
# marginal bytes per connection (RSS between the halves / (N/2): P3's
# figure) and the whole RSS delta / N (which also holds the server's
# one-time costs); the run fails unless all N are still open. herald needs
# the broker (started here if not running).
#
#   loadtest/idle-memory.sh [N] [C]      (default N = 5000, C = 100)
#   HOLD=80 SERVERS="herald floor centrifugo" loadtest/idle-memory.sh 10000
#   HERALD_ARGS="--read-buffer-bytes 1024" SERVERS=herald loadtest/idle-memory.sh
#   HERALD_BIN=/path/to/another/herald SERVERS=herald loadtest/idle-memory.sh
#   (loadtest/ab-memory.sh alternates two builds this way)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The build directory, KILL (stopped at exit), start_node, wait_listening.
source loadtest/common.sh
N="${1:-5000}"
C="${2:-100}"
HOLD="${HOLD:-80}"
SERVERS="${SERVERS:-herald floor centrifugo}"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results}"
mkdir -p "$OUT"
ulimit -n $(( N * 2 + 1000 )) 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null ||
    echo "idle-memory: could not raise the fd limit to $(( N * 2 + 1000 ))"
cargo build --release -q -p herald -p herald-loadtest
BIN="$CARGO_TARGET_DIR/release"
for server in $SERVERS; do
    case $server in
        herald)
            ensure_broker
            start_node "$OUT" mem-herald "${HERALD_BIN:-$BIN/herald}" --topic-prefix "mem-$$." \
                --namespaces chat=8:anonymous ${HERALD_ARGS:-}
            srv=$PID; proto=herald
            url=$NODE_URL
            ;;
        floor)
            "$BIN/herald-loadtest" ws-floor-server --listen 127.0.0.1:0 > "$OUT/mem-floor.out" 2>&1 &
            srv=$!; KILL+=("$srv"); proto=herald
            wait_listening "$OUT/mem-floor.out" "ws-floor listening on "
            url=$LISTENING
            ;;
        centrifugo)
            url="$(OUT="$OUT" loadtest/centrifugo/start.sh | tail -1)"
            pids=($(cat "$OUT/centrifugo.pids"))
            KILL+=("${pids[@]}")
            srv="${pids[1]}"; proto=centrifugo
            ;;
        *) echo "idle-memory: unknown server $server"; exit 2 ;;
    esac
    [[ -n "$url" ]] || { echo "idle-memory: $server did not start"; exit 1; }
    sleep 1
    before=$(rss "$srv")
    # Two idle clients of N/2 connections each, the second started once
    # the first's are open and idle: the RSS between them is the memory of
    # N/2 more connections on a server that already has some, without the
    # server's one-time costs of its first subscriptions (the tail's first
    # fetches, a thread's allocator arena), which the whole delta / N
    # spreads over the connections.
    half=$(( N / 2 ))
    lines=()
    mid=""
    for part in 1 2; do
        "$BIN/herald-loadtest" idle --url "$url" --proto "$proto" --connections "$half" --channels "$C" \
            --hold-secs "$HOLD" --json "$OUT/p3-$server-$N-$part.json" > "$OUT/mem-idle-$part.out" 2> "$OUT/mem-idle-$part.err" &
        cli=$!; KILL+=("$cli")
        for _ in $(seq 1 $(( (HOLD + 400) * 5 ))); do
            grep -q "^open" "$OUT/mem-idle-$part.out" && break
            kill -0 "$cli" 2>/dev/null || break
            sleep 0.2
        done
        line="$(grep "^open" "$OUT/mem-idle-$part.out" || true)"
        if [[ "$line" != "open $half of $half "* ]]; then
            echo "idle-memory: $server: not every connection stayed open: ${line:-no result}"
            cat "$OUT/mem-idle-$part.err"
            exit 1
        fi
        lines+=("$line")
        if [[ $part == 1 ]]; then mid=$(rss "$srv"); fi
    done
    after=$(rss "$srv")
    kill "${KILL[@]: -2}" 2>/dev/null || true
    echo "server=$server connections=$N channels=$C idle_secs=$HOLD rss_before_kib=$before rss_half_kib=$mid rss_after_kib=$after bytes_per_connection=$(( (after - before) * 1024 / N )) marginal_bytes_per_connection=$(( (after - mid) * 1024 / half )) (${lines[0]}; ${lines[1]})"
    if [[ $server == centrifugo ]]; then kill "${pids[@]}" 2>/dev/null || true; else kill "$srv" 2>/dev/null || true; fi
    wait "$srv" 2>/dev/null || true
done
