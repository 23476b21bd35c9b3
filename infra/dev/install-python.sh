#!/usr/bin/env bash
# The Python the tests use: a virtualenv in $HERALD_CACHE/venv with
# confluent-kafka (the analytics recipes; its wheels bundle librdkafka) and
# the Python client's pinned test dependencies
# (clients/python/requirements-test.txt: websockets, httpx, pytest, mypy).
# The client itself is installed by infra/dev/test.sh on every run.
# Idempotent: does nothing when the virtualenv was made from the same pins
# (a stamp in it). Prints the
# interpreter's path last.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERALD_CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
VENV="$HERALD_CACHE/venv"
CONFLUENT_KAFKA_VERSION="2.16.1"

IMPORTS="import confluent_kafka, websockets, httpx, pytest, pytest_asyncio, pytest_timeout, mypy"
PINS="confluent-kafka==$CONFLUENT_KAFKA_VERSION $(sha256sum "$ROOT/clients/python/requirements-test.txt" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && "$(cat "$VENV/.herald-pins" 2>/dev/null)" == "$PINS" ]] &&
    "$VENV/bin/python" -c "$IMPORTS" 2>/dev/null; then
    echo "$VENV/bin/python"
    exit 0
fi
mkdir -p "$HERALD_CACHE"
echo "install-python: $VENV: confluent-kafka $CONFLUENT_KAFKA_VERSION and the Python client's test pins" >&2
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "confluent-kafka==$CONFLUENT_KAFKA_VERSION" \
    -r "$ROOT/clients/python/requirements-test.txt" >&2
"$VENV/bin/python" -c "$IMPORTS" >&2
echo "$PINS" >"$VENV/.herald-pins"
echo "$VENV/bin/python"
