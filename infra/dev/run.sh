#!/usr/bin/env bash
# Try herald: installs the broker if needed (first time: 15-25 min build,
# cached in ~/.cache/herald), starts it, builds herald and runs one edge node
# on ws://127.0.0.1:8080/ws with the `chat` namespace. Ctrl-C stops herald;
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
cat <<'MSG'
run: connect with the bundled client in another terminal:
       cargo run -p herald-client --example chat -- ws://127.0.0.1:8080/ws chat:lobby
     (type a line to publish it; messages on the channel are printed), or any
     WebSocket client sending JSON frames, e.g. with websocat:
       {"type":"subscribe","channel":"chat:lobby"}
       {"type":"publish","channel":"chat:lobby","id":"<uuid>","data":{"text":"hi"}}
MSG
exec "$CARGO_TARGET_DIR/debug/herald" serve --fetch-wait-max-ms 5 "$@"
