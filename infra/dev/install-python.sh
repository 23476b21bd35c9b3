#!/usr/bin/env bash
# The Python side of the analytics recipes: a virtualenv in
# $HERALD_CACHE/venv with confluent-kafka (its wheels bundle librdkafka).
# Idempotent: does nothing when the package already imports. Prints the
# interpreter's path last.
set -euo pipefail
HERALD_CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
VENV="$HERALD_CACHE/venv"
CONFLUENT_KAFKA_VERSION="2.16.1"

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import confluent_kafka" 2>/dev/null; then
    echo "$VENV/bin/python"
    exit 0
fi
mkdir -p "$HERALD_CACHE"
echo "install-python: creating $VENV with confluent-kafka $CONFLUENT_KAFKA_VERSION" >&2
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "confluent-kafka==$CONFLUENT_KAFKA_VERSION" >&2
"$VENV/bin/python" -c "import confluent_kafka" >&2
echo "$VENV/bin/python"
