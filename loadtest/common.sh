# Sourced by loadtest/ scripts: the processes a run starts, stopped when it
# exits, and the broker it needs.
#
#   source loadtest/common.sh
#   ensure_broker                 # start infra/dev/broker.sh unless running
#   some_server & KILL+=("$!")    # stopped at exit
KILL=()
stop_broker=""
stop_started() {
    if ((${#KILL[@]})); then kill "${KILL[@]}" 2>/dev/null || true; fi
    if [[ -n $stop_broker ]]; then infra/dev/broker.sh stop >/dev/null 2>&1 || true; fi
}
trap stop_started EXIT
ensure_broker() {
    if ! infra/dev/broker.sh status >/dev/null 2>&1; then
        infra/dev/broker.sh start
        stop_broker=1
    fi
}
