#!/usr/bin/env bash
# Start, stop or inspect the dev/CI Kafka-protocol broker (Tansu) on
# 127.0.0.1:9092 with on-disk (sqlite) storage. Idempotent.
#
#   broker.sh start    install if needed, start, wait until it answers, create topics
#   broker.sh stop     stop it by PID (SIGTERM, then SIGKILL after 10 s)
#   broker.sh status   say whether it runs
#   broker.sh kill     SIGKILL it (fault tests)
#
#   HERALD_CACHE        cache root (default ~/.cache/herald); binary lives there
#   HERALD_BROKER_DATA  data directory (default $HERALD_CACHE/broker-data)
#   HERALD_BROKER_PORT  port (default 9092)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
BIN="$CACHE/tansu-$TANSU_VERSION/bin/tansu"
DATA="${HERALD_BROKER_DATA:-$CACHE/broker-data}"
PORT="${HERALD_BROKER_PORT:-9092}"
URL="tcp://127.0.0.1:$PORT"
PIDFILE="$DATA/tansu.pid"
LOG="$DATA/tansu.log"

say() { echo "broker: $*"; }

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "tansu"; then
        echo "$pid"
        return 0
    fi
    return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

create_topics() {
    # herald creates its own topics at start; creating the default ones here
    # too lets other Kafka clients use them before herald first runs.
    local t
    for t in "herald.chat:8" "herald.meta:1"; do
        local name="${t%%:*}" parts="${t##*:}"
        if out="$("$BIN" topic create --broker "$URL" --partitions "$parts" "$name" 2>&1)"; then
            say "created topic $name ($parts partitions)"
        else
            say "topic $name: $(echo "$out" | tail -1 | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-160) (already there is fine)"
        fi
    done
}

start() {
    "$HERE/install-broker.sh"
    mkdir -p "$DATA"
    if pid="$(running_pid)"; then
        say "already running (pid $pid) on $URL, data in $DATA"
        return 0
    fi
    if port_open; then
        say "something else listens on 127.0.0.1:$PORT; not starting a second broker"
        say "(if it is a Kafka broker herald can use it; otherwise set HERALD_BROKER_PORT)"
        return 0
    fi
    say "starting tansu $TANSU_VERSION on $URL, data in $DATA, log in $LOG"
    (
        cd "$DATA"
        # setsid: the broker outlives the calling shell's job control but is
        # still stopped by PID through this script.
        setsid "$BIN" broker \
            --listener-url "$URL" \
            --advertised-listener-url "$URL" \
            --storage-engine "sqlite://tansu.db" \
            >>"$LOG" 2>&1 < /dev/null &
        echo $! > "$PIDFILE"
    )
    local i
    for i in $(seq 1 100); do
        if port_open; then
            say "up after $((i * 100)) ms (pid $(cat "$PIDFILE"))"
            create_topics
            return 0
        fi
        # kill -0 only: right after the fork the child may not have exec'd
        # tansu yet, so its command line can still read "bash".
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            say "exited during start; last log lines:"
            tail -20 "$LOG" || true
            return 1
        fi
        sleep 0.1
    done
    say "did not answer on $URL within 10 s; log: $LOG"
    return 1
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        say "not running"
        rm -f "$PIDFILE"
        return 0
    fi
    say "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { say "stopped"; rm -f "$PIDFILE"; return 0; }
        sleep 0.1
    done
    say "still alive after 10 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

kill9() {
    local pid
    if pid="$(running_pid)"; then
        say "SIGKILL pid $pid"
        kill -KILL "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        rm -f "$PIDFILE"
    else
        say "not running"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    kill) kill9 ;;
    status)
        if pid="$(running_pid)"; then say "running (pid $pid) on $URL"; else say "not running"; exit 1; fi
        ;;
    *) echo "usage: $0 start|stop|status|kill" >&2; exit 2 ;;
esac
