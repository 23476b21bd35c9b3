#!/usr/bin/env bash
# A/B of two herald builds on P3 (memory per idle subscribed connection),
# alternating (A B A B ...): each run is `SERVERS=herald
# loadtest/idle-memory.sh N` with HERALD_BIN set to the build (N connections
# on 100 channels, one message each, idle HOLD seconds answering pings; a run
# fails unless all N stayed open). The dev broker is started once if it is
# not running.
#
#   loadtest/ab-memory.sh /path/to/herald-a /path/to/herald-b [PAIRS] [N]
#   (PAIRS=2, N=5000, HOLD=80 by default)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
A=${1:?herald build A}; B=${2:?herald build B}; PAIRS=${3:-2}; N=${4:-5000}
export HOLD="${HOLD:-80}"
if ! infra/dev/broker.sh status >/dev/null 2>&1; then
    infra/dev/broker.sh start || exit 1
    trap 'infra/dev/broker.sh stop >/dev/null 2>&1 || true' EXIT
fi
status=0
for i in $(seq 1 "$PAIRS"); do
    for bin in "$A" "$B"; do
        if out="$(HERALD_BIN="$bin" SERVERS=herald loadtest/idle-memory.sh "$N" 100 2>&1)"; then
            echo "$(basename "$bin")-$i: $(grep '^server=' <<<"$out")"
        else
            echo "$(basename "$bin")-$i: failed"; echo "$out"; status=1
        fi
    done
done
exit $status
