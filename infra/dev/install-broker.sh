#!/usr/bin/env bash
# Install the pinned dev/CI broker (Tansu, a Kafka-protocol broker) into a cache
# directory outside the repository. Idempotent: if the binary is already there,
# this prints its path and exits in well under a second.
#
#   HERALD_CACHE   cache root (default: ~/.cache/herald)
#
# The first install builds Tansu from crates.io: about 15-21 minutes and ~2 GB of
# memory on a 2-core machine. Later runs reuse the cached binary.
set -euo pipefail

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
ROOT="$CACHE/tansu-$TANSU_VERSION"
BIN="$ROOT/bin/tansu"
LOCK="$CACHE/install-broker.lock"

mkdir -p "$CACHE"
if [[ -x "$BIN" ]]; then
    echo "install-broker: tansu $TANSU_VERSION already installed at $BIN"
    exit 0
fi

# Serialise concurrent installs (a CI run and a person at the terminal, say).
exec 9>"$LOCK"
if ! flock -n 9; then
    echo "install-broker: another install is running; waiting for it"
    flock 9
fi
if [[ -x "$BIN" ]]; then
    echo "install-broker: tansu $TANSU_VERSION installed by the other run at $BIN"
    exit 0
fi

echo "install-broker: building tansu $TANSU_VERSION from crates.io into $ROOT"
echo "install-broker: this is a one-time build and takes 15-25 minutes on 2 cores"
start=$(date +%s)
# A private target dir so a failed build can be resumed and the project's own
# target dir is not polluted with the broker's 600 crates.
CARGO_TARGET_DIR="$CACHE/tansu-build" \
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql --root "$ROOT"
rm -rf "$CACHE/tansu-build"
echo "install-broker: done in $(( $(date +%s) - start ))s: $BIN"
