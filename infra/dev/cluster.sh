#!/usr/bin/env bash
# A three-node Apache Kafka cluster on loopback for the replication and
# failover tests: every node is broker and controller (KRaft, a static quorum
# of three), replication factor 3 and min.insync.replicas=2 by default.
#
#   cluster.sh start          install if needed, start all three, wait until all serve
#   cluster.sh stop           stop all three
#   cluster.sh status         each node's state; exit 0 when all three run
#   cluster.sh bootstrap      print the bootstrap.servers list
#   cluster.sh start N        start node N (1-3) again on its data and wait for it
#   cluster.sh stop N         SIGTERM node N (a clean shutdown)
#   cluster.sh kill N         SIGKILL node N
#   cluster.sh pause N        SIGSTOP node N (a stalled broker)
#   cluster.sh resume N       SIGCONT node N
#
#   HERALD_CACHE          cache root (default ~/.cache/herald)
#   HERALD_CLUSTER_DATA   cluster directory (default $HERALD_CACHE/cluster): node1/ node2/ node3/
#   HERALD_CLUSTER_PORT   first client port (default 29092: nodes on 29092-29094,
#                         controllers on +100: 29192-29194)
#   HERALD_CLUSTER_HEAP   JVM heap per node (default 384m)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
DATA="${HERALD_CLUSTER_DATA:-$CACHE/cluster}"
BASE="${HERALD_CLUSTER_PORT:-29092}"
NODE="$HERE/../kafka/node.sh"
NODES=(1 2 3)

export KAFKA_RF=3 KAFKA_MIN_ISR=2
export KAFKA_HEAP="${HERALD_CLUSTER_HEAP:-384m}"
export KAFKA_CLUSTER_ID="SGVyYWxkM05vZGVDbHVzdA"
voters=""
for n in "${NODES[@]}"; do
    voters+="${voters:+,}$n@127.0.0.1:$((BASE + 100 + n - 1))"
done
export KAFKA_VOTERS="$voters"

node() {
    local n="$1"; shift
    [[ $n =~ ^[123]$ ]] || { echo "cluster: no node $n (1-3)" >&2; exit 2; }
    KAFKA_NODE_ID="$n" KAFKA_NODE_DIR="$DATA/node$n" \
        KAFKA_PORT="$((BASE + n - 1))" KAFKA_CONTROLLER_PORT="$((BASE + 100 + n - 1))" \
        "$NODE" "$@"
}

bootstrap() {
    local n out=""
    for n in "${NODES[@]}"; do out+="${out:+,}127.0.0.1:$((BASE + n - 1))"; done
    echo "$out"
}

start_all() {
    local n status=0
    "$HERE/../kafka/install.sh" >/dev/null
    # All three at once: a node's broker serves only once the controller
    # quorum (two of three) has a leader.
    for n in "${NODES[@]}"; do node "$n" launch; done
    for n in "${NODES[@]}"; do node "$n" wait || status=1; done
    [[ $status == 0 ]] && echo "cluster: up, bootstrap $(bootstrap)"
    return $status
}

case "${1:-}:${2:-}" in
    start:) start_all ;;
    stop:) for n in "${NODES[@]}"; do node "$n" stop & done; wait ;;
    status:)
        s=0
        for n in "${NODES[@]}"; do node "$n" status || s=1; done
        exit $s
        ;;
    bootstrap:) bootstrap ;;
    start:*) node "$2" start ;;
    stop:*|kill:*|pause:*|resume:*|status:*) node "$2" "$1" ;;
    *) echo "usage: $0 start|stop|status|bootstrap | start|stop|kill|pause|resume|status N" >&2; exit 2 ;;
esac
