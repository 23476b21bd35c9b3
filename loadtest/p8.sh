#!/usr/bin/env bash
# P8: one node at this machine's connection ceiling. N WebSocket connections
# (default 19,000: a process may open at most 20,000 files here, so herald
# stays below that) subscribe to one channel, opened by PARTS
# `herald-loadtest idle` processes, each from its own source addresses
# (127.0.P.1-8 for part P), one after the other. After HOLD seconds idle
# (herald pings every 20 s) the server's RSS gives the memory per
# connection: the whole delta / N, and the marginal figure (the RSS added by
# parts 2..PARTS over their connections, the first part having idled HOLD
# seconds too); then `herald-loadtest fanout` publishes FANOUTS messages, GAP_MS
# apart, and every idle process reports when the last of its connections
# had each one. Time to the last connection = the largest of those, per
# message; the median over the messages is the run's figure.
#
# The same for herald (release build, defaults, one broker) and the
# batching WebSocket floor (`ws-floor-server`: no Kafka, no limits), in
# counterbalanced order over ROUNDS rounds (herald first in odd rounds);
# printed per run and as the median ratio herald/floor with its range.
# Also printed: connections opened per second (to all subscribed), the
# server's CPU per fan-out (its CPU over the fan-out window minus an equal
# idle window, / FANOUTS) and the idle processes' CPU in the same window.
# A run fails when a connection closed, a message did not reach every
# connection within 60 s, or one arrived twice.
#
#   loadtest/p8.sh [N] [PARTS]          (default N = 19000, PARTS = 4)
#   ROUNDS=2 FANOUTS=10 GAP_MS=2000 HOLD=25 loadtest/p8.sh 19000 4
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source loadtest/common.sh
N="${1:-19000}"
PARTS="${2:-4}"
ROUNDS="${ROUNDS:-2}"
FANOUTS="${FANOUTS:-10}"
GAP_MS="${GAP_MS:-2000}"
HOLD="${HOLD:-25}"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results}"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
per=$(( N / PARTS ))
N=$(( per * PARTS ))
cargo build --release -q -p herald -p herald-loadtest
BIN="$CARGO_TARGET_DIR/release"
HZ=$(getconf CLK_TCK)
median() { sort -g | awk '{v[NR]=$1} END {if (NR) print (NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2)}'; }

# run SERVER ROUND: one run; prints its line and sets LAST_MS (the median
# time to the last connection).
run() {
    local server=$1 round=$2 srv url
    local tag="p8-$$-$round-$server"
    case $server in
        herald)
            ensure_broker
            start_node "$OUT" "$tag" "${HERALD_BIN:-$BIN/herald}" --topic-prefix "$tag." \
                --namespaces chat=8:anonymous ${HERALD_ARGS:-}
            srv=$PID; url=$NODE_URL
            ;;
        floor)
            "$BIN/herald-loadtest" ws-floor-server --listen 127.0.0.1:0 > "$OUT/$tag.out" 2>&1 &
            srv=$!; KILL+=("$srv")
            wait_listening "$OUT/$tag.out" "ws-floor listening on " || { echo "p8: the floor did not start"; exit 1; }
            url=$LISTENING
            ;;
    esac
    sleep 1
    local prefix="chat:$tag-" before mid parts=() sub_secs=0
    before=$(rss "$srv")
    local start=$SECONDS
    for p in $(seq 1 "$PARTS"); do
        "$BIN/herald-loadtest" idle --url "$url" --connections "$per" --channels 1 \
            --channel-prefix "$prefix" --hold-secs 1 --watch-fanouts \
            --source-ips "127.0.$p.1-127.0.$p.8" > "$OUT/$tag-$p.out" 2> "$OUT/$tag-$p.err" &
        parts+=("$!"); KILL+=("$!")
        for _ in $(seq 1 3000); do
            grep -q "^open" "$OUT/$tag-$p.out" && break
            kill -0 "${parts[-1]}" 2>/dev/null || break
            sleep 0.2
        done
        local line
        line="$(grep "^open" "$OUT/$tag-$p.out" || true)"
        if [[ "$line" != "open $per of $per "* ]]; then
            echo "p8: $server part $p: not every connection stayed open: ${line:-no result}"
            cat "$OUT/$tag-$p.err"; exit 1
        fi
        sub_secs=$(awk -v s="$sub_secs" -v l="$line" 'BEGIN {match(l, /in [0-9.]+ s/); print s + substr(l, RSTART + 3, RLENGTH - 5)}')
        if (( p == 1 )); then
            # The first part idle too: the RSS from here to the end is the
            # memory of the other parts' connections alone (P3's marginal
            # figure), without the node's one-time costs.
            sleep "$HOLD"
            mid=$(rss "$srv")
        fi
    done
    local open_secs=$(( SECONDS - start ))
    sleep "$HOLD"
    local idle_rss window_s c0 c1 c2 g1 g2
    idle_rss=$(rss "$srv")
    window_s=$(awk -v g="$GAP_MS" -v f="$FANOUTS" 'BEGIN {printf "%.1f", g * f / 1000}')
    c0=$(ticks "$srv"); sleep "$window_s"; c1=$(ticks "$srv"); g1=$(ticks "${parts[@]}")
    "$BIN/herald-loadtest" fanout --url "$url" --channel "${prefix}0" --count "$FANOUTS" \
        --gap-ms "$GAP_MS" --source-ip 127.0.0.2 > "$OUT/$tag-fanout.out" 2> "$OUT/$tag-fanout.err" ||
        { echo "p8: $server: the publisher failed"; cat "$OUT/$tag-fanout.err"; exit 1; }
    c2=$(ticks "$srv"); g2=$(ticks "${parts[@]}")
    local ids lasts=() p50s=() id
    ids=$(awk '/^published / {print $2}' "$OUT/$tag-fanout.out")
    for id in $ids; do
        local got=0
        for _ in $(seq 1 600); do
            got=$(cat "$OUT/$tag"-[0-9]*.out | grep -c "^fanout $id " || true)
            (( got >= PARTS )) && break
            sleep 0.1
        done
        if (( got < PARTS )); then
            echo "p8: $server: message $id reached every connection of only $got of $PARTS processes within 60 s"
            exit 1
        fi
        lasts+=("$(cat "$OUT/$tag"-[0-9]*.out | awk -v id="$id" '$1 == "fanout" && $2 == id {if ($8 > m) m = $8} END {print m}')")
        p50s+=("$(cat "$OUT/$tag"-[0-9]*.out | awk -v id="$id" '$1 == "fanout" && $2 == id {print $6}' | median)")
    done
    if cat "$OUT/$tag"-[0-9]*.out | grep -q "^fanout-duplicate"; then
        echo "p8: $server: a connection received a message twice"; exit 1
    fi
    for p in "${parts[@]}"; do kill -0 "$p" 2>/dev/null || { echo "p8: $server: an idle process ended early"; exit 1; }; done
    LAST_MS=$(printf '%s\n' "${lasts[@]}" | median)
    local p50 after
    p50=$(printf '%s\n' "${p50s[@]}" | median)
    after=$(rss "$srv")
    echo "server=$server round=$round connections=$N parts=$PARTS" \
        "time_to_last_ms=$LAST_MS (range $(printf '%s\n' "${lasts[@]}" | sort -g | sed -n '1p;$p' | paste -sd-))" \
        "p50_arrival_ms=$p50" \
        "bytes_per_connection=$(( (idle_rss - before) * 1024 / N ))" \
        "marginal_bytes_per_connection=$(( (idle_rss - mid) * 1024 / (N - per) )) rss_before_kib=$before rss_first_part_kib=$mid rss_idle_kib=$idle_rss rss_after_kib=$after" \
        "opened_per_sec=$(awk -v n="$N" -v s="$sub_secs" 'BEGIN {printf "%.0f", n / s}') open_secs=$open_secs" \
        "server_cpu_ms_per_fanout=$(awk -v a=$(( c2 - c1 )) -v b=$(( c1 - c0 )) -v hz="$HZ" -v f="$FANOUTS" 'BEGIN {printf "%.1f", (a - b) * 1000 / hz / f}')" \
        "clients_cpu_ms_per_fanout=$(awk -v a=$(( g2 - g1 )) -v hz="$HZ" -v f="$FANOUTS" 'BEGIN {printf "%.1f", a * 1000 / hz / f}')" \
        | tee -a "$OUT/p8-$$.txt"
    kill "${parts[@]}" "$srv" 2>/dev/null || true
    wait "${parts[@]}" "$srv" 2>/dev/null || true
}

ratios=()
for r in $(seq 1 "$ROUNDS"); do
    if (( r % 2 )); then order="herald floor"; else order="floor herald"; fi
    declare -A last=()
    for s in $order; do
        run "$s" "$r"
        last[$s]=$LAST_MS
    done
    ratios+=("$(awk -v h="${last[herald]}" -v f="${last[floor]}" 'BEGIN {printf "%.3f", h / f}')")
    echo "round $r: time to the last connection, herald/floor = ${ratios[-1]}"
done
echo "p8: connections=$N time_to_last herald/floor median $(printf '%s\n' "${ratios[@]}" | median) (range $(printf '%s\n' "${ratios[@]}" | sort -g | sed -n '1p;$p' | paste -sd-)) over $ROUNDS rounds; results in $OUT/p8-$$.txt" |
    tee -a "$OUT/p8-$$.txt"
