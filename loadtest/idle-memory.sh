#!/usr/bin/env bash
# Server memory per idle WebSocket connection (RSS delta / N): herald with its
# default 4 KiB read buffer, herald with tungstenite's default 128 KiB, and the
# bare WebSocket floor (herald-loadtest ws-floor-server, same 4 KiB buffer),
# in the same run. Needs the broker (infra/dev/broker.sh start).
#
#   loadtest/idle-memory.sh [N]      (default N = 5000)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${1:-5000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HERALD_CACHE:-$HOME/.cache/herald}/target}"
ulimit -n $(( N * 2 + 1000 )) 2>/dev/null || echo "idle-memory: could not raise the fd limit to $(( N * 2 + 1000 ))"
cargo build --release -q -p herald -p herald-client -p herald-loadtest --example idle --bin herald --bin herald-loadtest
BIN="$CARGO_TARGET_DIR/release"
PORT=18080
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
for rb in 4096 131072 floor; do
    if [[ $rb == floor ]]; then
        "$BIN/herald-loadtest" ws-floor-server --listen "127.0.0.1:$PORT" > /tmp/herald-mem.out 2> /tmp/herald-mem.err &
    else
        "$BIN/herald" serve --listen "127.0.0.1:$PORT" --topic-prefix "mem-$$." \
            --read-buffer-bytes "$rb" > /tmp/herald-mem.out 2> /tmp/herald-mem.err &
    fi
    srv=$!; pids+=("$srv")
    for _ in $(seq 1 100); do grep -q listening /tmp/herald-mem.out && break; sleep 0.1; done
    sleep 1
    before=$(rss "$srv")
    "$BIN/examples/idle" "ws://127.0.0.1:$PORT/ws" "$N" > /tmp/herald-idle.out 2>/dev/null &
    cli=$!; pids+=("$cli")
    for _ in $(seq 1 300); do grep -q open /tmp/herald-idle.out && break; sleep 0.2; done
    sleep 2
    after=$(rss "$srv")
    echo "server=$([[ $rb == floor ]] && echo ws-floor || echo "herald read_buffer_bytes=$rb") connections=$N rss_before_kib=$before rss_after_kib=$after bytes_per_connection=$(( (after - before) * 1024 / N ))"
    kill "$cli" "$srv"; wait "$cli" "$srv" 2>/dev/null || true
done
