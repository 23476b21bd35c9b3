#!/usr/bin/env bash
# Create topics on a running broker with Kafka's own TopicCommand, if missing.
#
#   topics.sh BOOTSTRAP NAME:PARTITIONS[:CONFIG=VALUE,...] ...
#
# Replication factor: the broker's default.replication.factor. Each topic is
# created by its own JVM, all at once.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LIBS="$(KAFKA_INSTALL_QUIET=1 "$HERE/install.sh")"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
bootstrap="$1"; shift
pids=()
for spec in "$@"; do
    IFS=: read -r name parts cfg <<< "$spec"
    args=(--bootstrap-server "$bootstrap" --create --if-not-exists --topic "$name" --partitions "$parts")
    if [[ -n "${cfg:-}" ]]; then
        IFS=, read -ra kvs <<< "$cfg"
        for kv in "${kvs[@]}"; do args+=(--config "$kv"); done
    fi
    (
        if out="$("$JAVA" -Xmx128m -XX:TieredStopAtLevel=1 -cp "$LIBS/*" \
            -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dlog4j2.level=WARN \
            org.apache.kafka.tools.TopicCommand "${args[@]}" 2>&1)"; then
            echo "topics: $name ($parts partitions${cfg:+, $cfg}) ready"
        else
            echo "topics: creating $name failed: $(echo "$out" | grep -v '^\[' | tail -3)" >&2
            exit 1
        fi
    ) &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
