#!/usr/bin/env bash
# Sizing figures for docs/operations.md: herald's memory (RSS) and file
# descriptors per connection, for N WebSocket connections each subscribed to
# one of C channels and having received one message (herald at its default
# settings, but for an open namespace and all connections from one address
# allowed; release build). Needs the broker (infra/dev/broker.sh start).
#
#   loadtest/sizing.sh [N] [C]      (default N = 10000, C = 1000)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${1:-10000}"
C="${2:-1000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HERALD_CACHE:-$HOME/.cache/herald}/target}"
# Each process (herald, the client) holds one socket per connection.
ulimit -n $(( N + 1000 )) 2>/dev/null || echo "sizing: could not raise the fd limit to $(( N + 1000 )) (hard limit $(ulimit -Hn))"
cargo build --release -q -p herald -p herald-client --example idle --bin herald
BIN="$CARGO_TARGET_DIR/release"
PORT=18081
OUT="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
threads() { ls "/proc/$1/task" | wc -l; }
"$BIN/herald" serve --listen "127.0.0.1:$PORT" --topic-prefix "sizing-$$." \
    --namespaces chat=8:anonymous --max-connections-per-ip $(( N + 10 )) > "$OUT/herald.out" 2> "$OUT/herald.err" &
srv=$!; pids+=("$srv")
for _ in $(seq 1 100); do grep -q listening "$OUT/herald.out" && break; sleep 0.1; done
sleep 1
rss0=$(rss "$srv"); fd0=$(fds "$srv")
"$BIN/examples/idle" "ws://127.0.0.1:$PORT/ws" "$N" "$C" > "$OUT/idle.out" 2> "$OUT/idle.err" &
cli=$!; pids+=("$cli")
for _ in $(seq 1 600); do grep -q open "$OUT/idle.out" && break; kill -0 "$cli" 2>/dev/null || { cat "$OUT/idle.err"; exit 1; }; sleep 0.2; done
grep -q open "$OUT/idle.out" || { echo "sizing: the connections did not open"; exit 1; }
sleep 5
rss1=$(rss "$srv"); fd1=$(fds "$srv")
conns=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^herald_edge_connections / {print $2}')
echo "herald: $(cat "$OUT/idle.out")"
echo "open connections (herald_edge_connections): $conns"
echo "rss_before_kib=$rss0 rss_after_kib=$rss1 bytes_per_connection=$(( (rss1 - rss0) * 1024 / N ))"
echo "fds_before=$fd0 fds_after=$fd1 fds_per_connection=$(awk -v a="$fd0" -v b="$fd1" -v n="$N" 'BEGIN {printf "%.3f", (b - a) / n}') threads=$(threads "$srv")"
