#!/usr/bin/env bash
# Ingest from 1,000 publishing connections, closed loop with one publish in
# flight each (and 1,000 subscribers on 1,000 channels, one each), against
# the bare producer with 1,000 records in flight, alternating, 3 pairs.
# Needs the dev broker (infra/dev/broker.sh start).
#   loadtest/ingest-1k.sh
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The build directory, KILL (stopped at exit), start_node, wait_listening.
source loadtest/common.sh
(cargo build --release -q -p herald -p herald-loadtest) || exit 1
LT="$CARGO_TARGET_DIR/release/herald-loadtest"
ulimit -n 65536 2>/dev/null
OUT="$(mktemp -d)"
start_node "$OUT" in1k "$CARGO_TARGET_DIR/release/herald" --kafka-brokers 127.0.0.1:9092 \
    --topic-prefix "in1k-$$." --namespaces chat=8:anonymous --fetch-wait-max-ms 100
U=$NODE_URL
for i in 1 2 3; do
  echo "pair $i floor: $($LT kafka-floor --brokers 127.0.0.1:9092 --fetch-wait-max-ms 100 --rate 0 --window 1000 --duration-secs 15 --size 100 2>&1 | grep -E '^publishes|^lost|^dup|^latency' | tr '\n' ' ')"
  echo "pair $i herald: $(timeout 120 $LT ws --url $U --publishers 1000 --subscribers 1000 --channels 1000 --rate 0 --window 1 --duration-secs 15 --size 100 --drain-secs 20 --source-ips 127.0.0.1-127.0.0.4 2>&1 | grep -E '^publishes|^lost|^dup|^out of|^latency|^deliveries|Error' | tr '\n' ' ')"
done
echo "ingest-1k: logs in $OUT"
