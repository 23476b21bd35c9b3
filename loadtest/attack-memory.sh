#!/usr/bin/env bash
# herald's memory under the attacks of docs/security.md
# (loadtest/attack-memory.py: never-read resumes of large messages, never-read
# SSE streams flooded with history requests, never-read long-poll answers),
# for each allocator setting in VARIANTS, one after the other against the
# same broker: the node's RSS before, at its peak, and AFTER seconds after
# the attackers closed. herald is the release build with every limit at its
# default; the broker is started if it is not running.
#
#   loadtest/attack-memory.sh
#   VARIANTS="glibc glibc-mmap" HOLD=45 AFTER=30 loadtest/attack-memory.sh
#   ATTACK_ARGS="--sse 0 --polls 0" loadtest/attack-memory.sh   # the resumes alone
#
# Variants: glibc (the default allocator as is), glibc-arena2
# (MALLOC_ARENA_MAX=2), glibc-mmap (GLIBC_TUNABLES: blocks of 128 KiB and
# more are mapped and unmapped, not kept in the heap).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The build directory, KILL (stopped at exit), start_node, wait_listening.
source loadtest/common.sh
VARIANTS="${VARIANTS:-glibc glibc-arena2 glibc-mmap}"
HOLD="${HOLD:-45}"
AFTER="${AFTER:-30}"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results}"
mkdir -p "$OUT"
cargo build --release -q -p herald
BIN="$CARGO_TARGET_DIR/release"
ensure_broker
for variant in $VARIANTS; do
    case $variant in
        glibc) env=() ;;
        glibc-arena2) env=(MALLOC_ARENA_MAX=2) ;;
        glibc-mmap) env=(GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072) ;;
        *) echo "attack-memory: unknown variant $variant" >&2; exit 2 ;;
    esac
    NODE_ENV=(${env[@]+"${env[@]}"} HERALD_AUTH_API_KEY=attack-memory-key)
    start_node "$OUT" "attack-$variant" "$BIN/herald" \
        --topic-prefix "attack-$$-$variant." --namespaces chat=8:anonymous
    srv=$PID
    url="$(echo "$NODE_URL" | sed 's#^ws://\([^/]*\).*#http://\1#')"
    result="$(python3 loadtest/attack-memory.py --url "$url" --pid "$srv" \
        --api-key attack-memory-key --hold "$HOLD" --after "$AFTER" ${ATTACK_ARGS:-})"
    echo "$variant $result" | tee -a "$OUT/attack-memory.txt"
    kill "$srv"; wait "$srv" 2>/dev/null || true
done
