#!/usr/bin/env bash
# A/B of two herald builds on P3 (memory per idle subscribed connection),
# alternating (A B A B ...), on the dev broker (started if not running): the
# same `herald-loadtest idle` run as loadtest/idle-memory.sh (N connections
# on 100 channels, one message each, idle HOLD seconds answering pings), the
# server's RSS delta / N read while all are open; a run fails unless all N
# stayed open.
#
#   loadtest/ab-memory.sh /path/to/herald-a /path/to/herald-b [PAIRS] [N]
#   (PAIRS=2, N=5000, HOLD=80 by default)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
A=${1:?herald build A}; B=${2:?herald build B}; PAIRS=${3:-2}; N=${4:-5000}
HOLD="${HOLD:-80}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HERALD_CACHE:-$HOME/.cache/herald}/target}"
cargo build --release -q -p herald-loadtest || exit 1
LT="$CARGO_TARGET_DIR/release/herald-loadtest"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
ulimit -n $(( N * 2 + 1000 )) 2>/dev/null || true
KILL=()
stop_broker=""
finish() {
    if ((${#KILL[@]})); then kill "${KILL[@]}" 2>/dev/null || true; fi
    if [[ -n $stop_broker ]]; then infra/dev/broker.sh stop >/dev/null 2>&1 || true; fi
}
trap finish EXIT
if ! infra/dev/broker.sh status >/dev/null 2>&1; then
    infra/dev/broker.sh start || exit 1
    stop_broker=1
fi
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
status=0
for i in $(seq 1 "$PAIRS"); do
    for bin in "$A" "$B"; do
        tag="$(basename "$bin")-$i"
        "$bin" serve --listen 127.0.0.1:0 --topic-prefix "abm-$$-$i." --namespaces chat=8:anonymous \
            > "$OUT/$tag.out" 2> "$OUT/$tag.err" &
        srv=$!; KILL+=("$srv")
        for _ in $(seq 1 300); do grep -q listening "$OUT/$tag.out" && break; sleep 0.1; done
        url="$(sed -n 's/^herald listening on //p' "$OUT/$tag.out")"
        [[ -n $url ]] || { echo "ab-memory: $tag did not start"; cat "$OUT/$tag.err"; exit 1; }
        sleep 1
        before=$(rss "$srv")
        "$LT" idle --url "$url" --proto herald --connections "$N" --channels 100 --hold-secs "$HOLD" \
            > "$OUT/idle-$tag.out" 2> "$OUT/idle-$tag.err" &
        cli=$!; KILL+=("$cli")
        for _ in $(seq 1 $(( (HOLD + 400) * 5 ))); do
            grep -q "^open" "$OUT/idle-$tag.out" && break
            kill -0 "$cli" 2>/dev/null || break
            sleep 0.2
        done
        after=$(rss "$srv")
        line="$(grep "^open" "$OUT/idle-$tag.out" || true)"
        kill "$cli" "$srv" 2>/dev/null; wait "$cli" "$srv" 2>/dev/null
        if [[ "$line" != "open $N of $N "* ]]; then
            echo "$tag: not every connection stayed open: ${line:-no result}"; status=1; continue
        fi
        echo "$tag: $(( (after - before) * 1024 / N )) bytes per idle subscribed connection ($line)"
    done
done
exit $status
