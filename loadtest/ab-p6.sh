#!/usr/bin/env bash
# A/B of herald builds on P6 (ingest, closed loop, 64 in flight) on
# librdkafka's mock cluster: each build against the bare producer in the same
# command, alternating, ROUNDS times (default 2); also herald's CPU per 1,000 acked publishes
# (from /proc/PID/stat), which the machine's noise moves less than acks/s,
# and herald's peak RSS (VmHWM).
#
#   loadtest/ab-p6.sh /path/to/herald-before /path/to/herald-after
#   (DUR=10 seconds per run by default)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The build directory, KILL (stopped at exit), start_node, wait_listening.
source loadtest/common.sh
(cargo build --release -q -p herald-loadtest)
BIN="$CARGO_TARGET_DIR/release"
OUT="$(mktemp -d)"
"$BIN/herald-loadtest" mock-broker --topics "ab.chat:8,ab.meta:1,ab.cursors:8,ab.control:1,ab.presence:8,loadtest-floor:1" \
    > "$OUT/mock.out" 2>&1 &
KILL+=("$!")
wait_listening "$OUT/mock.out" "mock broker at "
BROKERS=$LISTENING
# Counterbalanced: the builds' order reverses every round (A B, B A, ...).
for round in $(seq 1 "${ROUNDS:-2}"); do
    order=("$@")
    if ((round % 2 == 0)); then order=($(printf '%s\n' "$@" | tac)); fi
    for H in "${order[@]}"; do
        start_node "$OUT" h "$H" --kafka-brokers "$BROKERS" --topic-prefix ab. \
            --namespaces chat=8:anonymous --fetch-wait-max-ms 5 --publish-rate 0 \
            --queue-messages 100000 --queue-bytes 67108864
        srv=$PID
        URL=$NODE_URL
        result="$("$BIN/herald-loadtest" vs-kafka --url "$URL" --brokers "$BROKERS" --fetch-wait-max-ms 5 \
            --rate 0 --window 64 --duration-secs "${DUR:-10}" --size 100 --floor-topic loadtest-floor 2>/dev/null \
            | grep -E 'acks/s|herald /' | sed 's/publishes *sent [0-9]* *acked [0-9]* *nacked 0 *//' | tr '\n' ' ')"
        ticks=$(awk '{print $14+$15}' "/proc/$srv/stat")
        HTTP="$(echo "${URL%/ws}" | sed 's#ws://#http://#')"
        acked=$(curl -s "$HTTP/metrics" | awk '/^herald_publish_acks_total/ {print $2}')
        echo "== $H, round $round: $result"
        peak=$(awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$srv/status")
        cpu=$(awk -v t="$ticks" -v a="$acked" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t * 1000 / hz / (a / 1000)}')
        ratio=$(echo "$result" | sed -n 's/.*"acks_per_sec":{"max":[0-9.]*,"median":\([0-9.]*\).*/\1/p')
        echo "$H $cpu $ratio" >> "$OUT/summary"
        echo "   herald CPU: $cpu ms per 1,000 acks; peak RSS $peak MiB"
        kill "$srv"; wait "$srv" 2>/dev/null || true
    done
done
echo "== per build, median (range) over ${ROUNDS:-2} rounds: herald CPU ms per 1,000 acks; acks/s / the bare producer"
# med_range FIELD BUILD: the median (range) of a column of the summary.
med_range() {
    awk -v h="$2" -v f="$1" '$1 == h {print $f}' "$OUT/summary" | sort -n |
        awk '{v[NR] = $1} END {printf "%s (%s-%s)", v[int((NR + 1) / 2)], v[1], v[NR]}'
}
for H in "$@"; do
    echo "$H: CPU $(med_range 2 "$H"); acks/s ratio $(med_range 3 "$H")"
done
