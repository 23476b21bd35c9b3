# Sourced by loadtest/ scripts (from the repository's root): the build
# directory (CARGO_TARGET_DIR, default ~/.cache/herald/target), the processes
# a run starts, stopped when it exits, and the broker it needs.
#
#   source loadtest/common.sh
#   ensure_broker                 # start infra/dev/broker.sh unless running
#   some_server & KILL+=("$!")    # stopped at exit
#   start_node DIR NAME BIN FLAGS  # a herald node on a free port: PID, NODE_URL
#   rss PID; ticks PID...          # memory (KiB) and CPU (clock ticks) of processes
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HERALD_CACHE:-$HOME/.cache/herald}/target}"
KILL=()
# rss PID: its resident memory, KiB.
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# ticks PID...: their CPU time (user + system), clock ticks (getconf CLK_TCK
# per second; fields 14 and 15 of /proc/PID/stat: herald's process names
# have no spaces).
ticks() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done; echo "$t"; }
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
# wait_listening FILE PREFIX: waits up to 30 s for a line PREFIX<address> in
# FILE (what herald and the floors print once they listen); sets LISTENING.
wait_listening() {
    LISTENING=""
    for _ in $(seq 1 300); do
        LISTENING="$(sed -n "s|^$2||p" "$1" | head -n 1)"
        if [[ -n $LISTENING ]]; then return 0; fi
        sleep 0.1
    done
    return 1
}
# start_node DIR NAME BIN [FLAGS...]: `BIN serve --listen 127.0.0.1:0
# FLAGS...` (with the variables of the array NODE_ENV, if set, in its
# environment), its output in DIR/NAME.out and .err, stopped at exit; sets
# PID and NODE_URL once it listens, and exits the script when it does not.
start_node() {
    local dir=$1 name=$2 bin=$3
    shift 3
    env ${NODE_ENV[@]+"${NODE_ENV[@]}"} "$bin" serve --listen 127.0.0.1:0 "$@" \
        >"$dir/$name.out" 2>"$dir/$name.err" &
    PID=$!
    KILL+=("$PID")
    if ! wait_listening "$dir/$name.out" "herald listening on "; then
        echo "$name did not start:" >&2
        cat "$dir/$name.err" >&2
        exit 1
    fi
    NODE_URL=$LISTENING
}
