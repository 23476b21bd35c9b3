#!/usr/bin/env bash
# Starts the Socket.IO peer for the benchmarks: installs Debian's
# redis-server and the npm packages if missing, runs an ephemeral redis on
# $REDIS_PORT and server.js (one worker per core, SIO_WORKERS to change); prints the server's WebSocket URL on the last
# line; the PIDs to stop are written to $OUT/socketio.pids.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-/tmp}"
REDIS_PORT="${REDIS_PORT:-16379}"
if ! command -v redis-server >/dev/null; then
    echo "socketio: installing redis-server (apt)" >&2
    apt-get update -qq >&2 && apt-get install -y -qq redis-server >&2
fi
if [[ ! -d "$HERE/node_modules" ]]; then
    echo "socketio: installing npm packages" >&2
    (cd "$HERE" && npm ci --no-audit --no-fund --silent >&2)
fi
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    > "$OUT/redis.log" 2>&1 &
echo $! > "$OUT/socketio.pids"
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_URL="redis://127.0.0.1:$REDIS_PORT" PORT="${SIO_PORT:-13000}" WORKERS="${SIO_WORKERS:-$(nproc)}" node "$HERE/server.js" > "$OUT/socketio.out" 2> "$OUT/socketio.err" &
echo $! >> "$OUT/socketio.pids"
for _ in $(seq 1 100); do grep -q listening "$OUT/socketio.out" 2>/dev/null && break; sleep 0.1; done
sed -n 's/^socket.io listening on //p' "$OUT/socketio.out"
