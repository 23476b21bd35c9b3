#!/usr/bin/env bash
# Try herald: installs Apache Kafka from Maven Central if needed (first time
# ~35 s, cached in ~/.cache/herald), starts one KRaft broker on
# 127.0.0.1:9092 (infra/dev/broker.sh), builds herald and runs one edge node
# on ws://127.0.0.1:8080/ws with the clearly-labelled development config
# infra/dev/herald.dev.toml (anonymous `chat`, private `user:{sub}`), and
# prints a ready-to-use token. Ctrl-C stops herald;
# `infra/dev/broker.sh stop` stops the broker. Extra arguments go to
# `herald serve` (see `herald serve --help`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export HERALD_CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERALD_CACHE/target}"

infra/dev/broker.sh start
echo "run: building herald"
cargo build -p herald -p herald-client --examples --bins
echo "run: building the browser client and demo (clients/typescript)"
(cd clients/typescript && npm ci --no-audit --no-fund --silent && npm run --silent build)
CONFIG="$ROOT/infra/dev/herald.dev.toml"
HERALD="$CARGO_TARGET_DIR/debug/herald"
TOKEN="$("$HERALD" gentoken --config "$CONFIG" --sub dev --ttl-secs 86400)"
cat <<MSG
run: DEVELOPMENT CONFIGURATION ($CONFIG): public secret and API key,
     anonymous chat namespace. Not for production (see docs/configuration.md).

run: open the demo chat in a browser (two tabs to talk to yourself):
       http://127.0.0.1:8080/demo/
     (?transports=sse or ?transports=poll to try the fallbacks)

run: connect with the bundled client in another terminal:
       cargo run -p herald-client --example chat -- ws://127.0.0.1:8080/ws chat:lobby
     (type a line to publish it; messages on the channel are printed), or any
     WebSocket client sending JSON frames, e.g. with websocat:
       {"type":"subscribe","channel":"chat:lobby"}
       {"type":"publish","channel":"chat:lobby","id":"<uuid>","data":{"text":"hi"}}

run: a token for user "dev", valid 24 h (private channel user:dev):
       $TOKEN
     connect as ws://127.0.0.1:8080/ws?token=<token> or send {"type":"auth","token":"<token>"}.
     Backends publish to it with the HTTP API:
       curl -s -H 'X-Api-Key: herald-dev-api-key-public' -d '{"channel":"user:dev","data":{"text":"hi"}}' http://127.0.0.1:8080/api/publish
MSG
exec "$HERALD" serve --config "$CONFIG" "$@"
