#!/usr/bin/env bash
# CPU of herald and of the dev broker at near-idle, per fetch.wait.max.ms:
# 32 subscribers on 32 channels (the tail follows all 8 partitions) and 2
# publishes/s for 30 s, herald's and the broker's CPU seconds from /proc.
# Needs the dev broker (infra/dev/broker.sh start); builds release binaries.
#
#   loadtest/fetch-wait-cpu.sh [WAIT_MS ...]     (default 5 100 500, two rounds)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The build directory, KILL (stopped at exit), start_node, wait_listening.
source loadtest/common.sh
CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
WAITS=("$@"); [[ ${#WAITS[@]} -gt 0 ]] || WAITS=(5 100 500)
cargo build --release -q -p herald -p herald-loadtest
B="$CARGO_TARGET_DIR/release"
BPID="$(cat "${HERALD_BROKER_DATA:-$CACHE/broker}/node.pid")"
TMP="$(mktemp -d)"
tick=$(getconf CLK_TCK)
cpu() { awk -v t="$tick" '{printf "%.2f", ($14+$15)/t}' "/proc/$1/stat"; }
for round in 1 2; do
    for fw in "${WAITS[@]}"; do
        start_node "$TMP" herald "$B/herald" --topic-prefix "fwcpu-$$-$fw-$round." \
            --namespaces chat=8:anonymous --fetch-wait-max-ms "$fw"
        H=$PID
        URL=$NODE_URL
        sleep 2
        h0=$(cpu $H); b0=$(cpu "$BPID")
        "$B/herald-loadtest" ws --url "$URL" --subscribers 32 --channels 32 --publishers 1 \
            --rate 2 --duration-secs 30 --drain-secs 1 > "$TMP/lt" 2>&1
        h1=$(cpu $H); b1=$(cpu "$BPID")
        echo "fetch_wait_max_ms=$fw round=$round herald_cpu_s=$(echo "$h1 - $h0" | bc) broker_cpu_s=$(echo "$b1 - $b0" | bc) $(grep -E '^(lost|duplicated)' "$TMP/lt" | tr -s ' ' | tr '\n' ' ')"
        kill "$H"; wait "$H" 2>/dev/null || true
    done
done
rm -rf "$TMP"
