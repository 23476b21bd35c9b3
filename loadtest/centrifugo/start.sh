#!/usr/bin/env bash
# Starts the Centrifugo peer for the benchmarks: builds Centrifugo
# $CENTRIFUGO_VERSION from the Go module proxy into the cache if missing
# (`go install`), runs an ephemeral Debian redis-server on $REDIS_PORT as its
# engine (PUB/SUB and the channels' history streams) with its append-only
# file fsynced every second (`CF_REDIS_AOF=0`: no persistence), the nearest
# to herald's durability a single Redis has (a herald ack is a Kafka write
# with acks=all; the broker itself does not fsync per write), and Centrifugo with
# history and recovery on for the `chat` namespace, anonymous clients allowed
# to subscribe and publish, every other limit at its default. Prints the
# WebSocket URL on the last line; the PIDs to stop are written to
# $OUT/centrifugo.pids.
set -euo pipefail
OUT="${OUT:-/tmp}"
CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
CENTRIFUGO_VERSION="${CENTRIFUGO_VERSION:-v6.9.1}"
REDIS_PORT="${CF_REDIS_PORT:-16380}"
PORT="${CF_PORT:-18000}"
BIN="$CACHE/centrifugo-$CENTRIFUGO_VERSION/centrifugo"
if [[ ! -x "$BIN" ]]; then
    echo "centrifugo: building $CENTRIFUGO_VERSION from the Go module proxy (a few minutes)" >&2
    mkdir -p "$(dirname "$BIN")"
    GOBIN="$(dirname "$BIN")" go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION" >&2
fi
if ! command -v redis-server >/dev/null; then
    echo "centrifugo: installing redis-server (apt)" >&2
    apt-get update -qq >&2 && apt-get install -y -qq redis-server >&2
fi
if [[ "${CF_REDIS_AOF:-1}" == 1 ]]; then
    rm -rf "$OUT/cf-redis-data" && mkdir -p "$OUT/cf-redis-data"
    persistence=(--appendonly yes --appendfsync everysec --dir "$OUT/cf-redis-data")
else
    persistence=(--appendonly no)
fi
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" "${persistence[@]}" --daemonize no \
    > "$OUT/cf-redis.log" 2>&1 &
echo $! > "$OUT/centrifugo.pids"
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
# History as deep as herald's default ring (10,000 per channel), kept a day;
# recovery forced, so every subscription is positioned and can resume.
cat > "$OUT/centrifugo.json" <<JSON
{
  "http_server": {"address": "127.0.0.1", "port": $PORT},
  "log": {"level": "error"},
  "engine": {"type": "redis", "redis": {"address": ["redis://127.0.0.1:$REDIS_PORT"]}},
  "client": {"allow_anonymous_connect_without_token": true, "allowed_origins": ["*"]},
  "channel": {
    "namespaces": [{
      "name": "chat",
      "history_size": 10000,
      "history_ttl": "24h",
      "force_recovery": true,
      "allow_subscribe_for_anonymous": true,
      "allow_subscribe_for_client": true,
      "allow_publish_for_anonymous": true,
      "allow_publish_for_client": true
    }]
  },
  "prometheus": {"enabled": true},
  "health": {"enabled": true}
}
JSON
"$BIN" checkconfig -c "$OUT/centrifugo.json" >&2
"$BIN" -c "$OUT/centrifugo.json" > "$OUT/centrifugo.out" 2> "$OUT/centrifugo.err" &
echo $! >> "$OUT/centrifugo.pids"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "centrifugo: not healthy" >&2; cat "$OUT/centrifugo.err" >&2; exit 1; }
echo "ws://127.0.0.1:$PORT/connection/websocket"
