#!/usr/bin/env bash
# One Apache Kafka node in KRaft mode (broker and controller in one process),
# on loopback: the building block of infra/dev/broker.sh (one node) and
# infra/dev/cluster.sh (three). Configured entirely by environment:
#
#   KAFKA_NODE_ID        node.id (1, 2, 3 ...)
#   KAFKA_NODE_DIR       directory of this node: server.properties, data/, node.log, node.pid
#   KAFKA_PORT           client port (PLAINTEXT on $KAFKA_HOST)
#   KAFKA_CONTROLLER_PORT controller port on $KAFKA_HOST
#   KAFKA_HOST           the address it listens on and advertises (default
#                        127.0.0.1; a test's network namespace gives its own)
#   KAFKA_VOTERS         controller.quorum.voters, e.g. 1@127.0.0.1:9093
#   KAFKA_RF             replication factor of internal topics and the default (1 or 3)
#   KAFKA_MIN_ISR        min.insync.replicas default
#   KAFKA_HEAP           heap size (default 512m)
#   KAFKA_CLUSTER_ID     cluster id (fixed by the callers: storage is formatted once)
#
#   node.sh start        format the storage if new, launch, wait until it serves
#   node.sh launch       format if new and launch without waiting (cluster start)
#   node.sh wait         wait until a launched node serves
#   node.sh stop         SIGTERM and wait (SIGKILL after 30 s)
#   node.sh kill         SIGKILL
#   node.sh pause|resume SIGSTOP / SIGCONT (a stalled broker: GC, disk)
#   node.sh status       exit 0 when running
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${KAFKA_NODE_ID:?}" "${KAFKA_NODE_DIR:?}" "${KAFKA_PORT:?}" "${KAFKA_CONTROLLER_PORT:?}" "${KAFKA_VOTERS:?}"
RF="${KAFKA_RF:-1}"
MIN_ISR="${KAFKA_MIN_ISR:-1}"
HEAP="${KAFKA_HEAP:-512m}"
CLUSTER_ID="${KAFKA_CLUSTER_ID:-SGVyYWxkRGV2Q2x1c3Rlcg}"
HOST="${KAFKA_HOST:-127.0.0.1}"
DIR="$KAFKA_NODE_DIR"
PIDFILE="$DIR/node.pid"
LOG="$DIR/node.log"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
NAME="kafka node $KAFKA_NODE_ID ($HOST:$KAFKA_PORT)"

say() { echo "$NAME: $*"; }

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    # The command line names this node's own config: a recycled PID is not it.
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$DIR/server.properties"; then
        echo "$pid"
        return 0
    fi
    return 1
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

write_config() {
    mkdir -p "$DIR/data"
    cat > "$DIR/server.properties" <<PROPS
# Written by infra/kafka/node.sh; rewritten at every start.
process.roles=broker,controller
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$KAFKA_VOTERS
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DIR/data
# herald creates its topics with the partitions and settings it needs; a
# metadata request must never create one with the broker's defaults.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$RF
min.insync.replicas=$MIN_ISR
offsets.topic.replication.factor=$RF
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$RF
transaction.state.log.min.isr=$MIN_ISR
share.coordinator.state.topic.replication.factor=$RF
share.coordinator.state.topic.min.isr=$MIN_ISR
group.initial.rebalance.delay.ms=0
# Two cores: fewer threads than the defaults sized for a server.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
background.threads=4
# Loopback brokers die and return in the fault tests: notice it quickly.
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
replica.lag.time.max.ms=10000
PROPS
}

format_once() {
    if [[ -f "$DIR/data/meta.properties" ]]; then
        return 0
    fi
    say "formatting storage in $DIR/data (cluster id $CLUSTER_ID)"
    "$JAVA" -Xmx256m -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
        kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$DIR/server.properties" \
        >>"$LOG" 2>&1 || { say "storage format failed; log: $LOG"; tail -20 "$LOG"; return 1; }
}

launch() {
    LIBS="$(KAFKA_INSTALL_QUIET=1 "$HERE/install.sh")"
    mkdir -p "$DIR"
    if pid="$(running_pid)"; then
        say "already running (pid $pid)"
        return 0
    fi
    if port_open "$KAFKA_PORT"; then
        say "something else listens on $HOST:$KAFKA_PORT; not starting a second broker"
        return 1
    fi
    write_config
    format_once
    # Where this start's lines begin in the log: `wait` looks only after it.
    stat -c %s "$LOG" 2>/dev/null > "$DIR/log.offset" || echo 0 > "$DIR/log.offset"
    say "starting, data in $DIR/data, log $LOG"
    (
        cd "$DIR"
        # setsid: the broker outlives the calling shell's job control but is
        # stopped by PID through this script.
        setsid "$JAVA" -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -Djava.awt.headless=true -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
            -Dkafka.logs.dir="$DIR" \
            -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" \
            >>"$LOG" 2>&1 < /dev/null &
        echo $! > "$PIDFILE"
    )
}

wait_up() {
    local off i pid
    off="$(cat "$DIR/log.offset" 2>/dev/null || echo 0)"
    pid="$(cat "$PIDFILE" 2>/dev/null || echo)"
    for i in $(seq 1 1200); do
        # Serving: the server says it started and the client port answers.
        # (`|| true`: grep -q stops reading at the first match, and the
        # SIGPIPE tail then gets must not fail the pipeline under pipefail.)
        if { tail -c +"$((off + 1))" "$LOG" 2>/dev/null || true; } | grep -q "Kafka Server started" \
            && port_open "$KAFKA_PORT"; then
            say "up after $((i / 10)).$((i % 10)) s (pid $pid)"
            return 0
        fi
        if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
            say "exited during start; last log lines:"
            tail -30 "$LOG" || true
            return 1
        fi
        sleep 0.1
    done
    say "not serving within 120 s; log: $LOG"
    return 1
}

stop() {
    local pid i
    if ! pid="$(running_pid)"; then
        say "not running"
        rm -f "$PIDFILE"
        return 0
    fi
    # A paused node cannot shut down.
    kill -CONT "$pid" 2>/dev/null || true
    say "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { say "stopped"; rm -f "$PIDFILE"; return 0; }
        sleep 0.1
    done
    say "still alive after 30 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$PIDFILE"
}

signal() {
    local sig="$1" pid
    if pid="$(running_pid)"; then
        say "SIG$sig pid $pid"
        kill -"$sig" "$pid"
        if [[ $sig == KILL ]]; then
            while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
            rm -f "$PIDFILE"
        fi
    else
        say "not running"
        [[ $sig == KILL ]] || return 1
    fi
}

case "${1:-}" in
    start)
        if pid="$(running_pid)"; then
            say "already running (pid $pid)"
        else
            launch
            wait_up
        fi
        ;;
    launch) launch ;;
    wait) wait_up ;;
    stop) stop ;;
    kill) signal KILL ;;
    pause) signal STOP ;;
    resume) signal CONT ;;
    status)
        if pid="$(running_pid)"; then
            state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo '?')"
            if [[ $state == T ]]; then say "paused (pid $pid)"; else say "running (pid $pid)"; fi
        else
            say "not running"; exit 1
        fi
        ;;
    *) echo "usage: $0 start|launch|wait|stop|kill|pause|resume|status" >&2; exit 2 ;;
esac
