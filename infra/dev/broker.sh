#!/usr/bin/env bash
# The dev and test broker: one Apache Kafka node in KRaft mode (broker and
# controller in one process) on 127.0.0.1:9092, installed from Maven Central
# by infra/kafka/install.sh. Idempotent.
#
#   broker.sh start    install if needed, format once, start, wait until it serves, create topics
#   broker.sh stop     stop it by PID (SIGTERM, then SIGKILL after 30 s)
#   broker.sh status   say whether it runs
#   broker.sh kill     SIGKILL it (fault tests)
#
#   HERALD_CACHE                  cache root (default ~/.cache/herald)
#   HERALD_BROKER_DATA            node directory (default $HERALD_CACHE/broker): data/, node.log
#   HERALD_BROKER_PORT            client port (default 9092)
#   HERALD_BROKER_CONTROLLER_PORT controller port (default client port + 1)
#   HERALD_BROKER_TOPICS          topics created at start, NAME:PARTITIONS[:CONFIG] (default:
#                                 herald's dev topics; empty: none, herald creates its own)
#   HERALD_BROKER_HEAP            JVM heap (default 512m)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
PORT="${HERALD_BROKER_PORT:-9092}"
export KAFKA_NODE_ID=1
export KAFKA_NODE_DIR="${HERALD_BROKER_DATA:-$CACHE/broker}"
export KAFKA_PORT="$PORT"
export KAFKA_CONTROLLER_PORT="${HERALD_BROKER_CONTROLLER_PORT:-$((PORT + 1))}"
export KAFKA_VOTERS="1@127.0.0.1:$KAFKA_CONTROLLER_PORT"
export KAFKA_RF=1 KAFKA_MIN_ISR=1
export KAFKA_HEAP="${HERALD_BROKER_HEAP:-512m}"
TOPICS="${HERALD_BROKER_TOPICS-herald.chat:8 herald.user:8 herald.meta:1:cleanup.policy=compact}"
NODE="$HERE/../kafka/node.sh"

case "${1:-}" in
    start)
        if "$NODE" status >/dev/null 2>&1; then
            "$NODE" status
            exit 0
        fi
        "$NODE" start
        # herald creates the topics it needs itself; creating the dev ones
        # here lets other Kafka clients use them before herald first runs.
        # shellcheck disable=SC2086
        [[ -z "$TOPICS" ]] || "$HERE/../kafka/topics.sh" "127.0.0.1:$PORT" $TOPICS
        ;;
    stop|kill|status|pause|resume) exec "$NODE" "$1" ;;
    *) echo "usage: $0 start|stop|status|kill" >&2; exit 2 ;;
esac
