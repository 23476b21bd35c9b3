#!/usr/bin/env bash
# Builds Helm (the chart's render check) from the Go module proxy into
# $HERALD_CACHE/bin when missing. Prints its path. The first build takes a
# few minutes on two cores; later runs find it.
set -euo pipefail
HERALD_CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
VERSION=v3.22.0
BIN="$HERALD_CACHE/bin/helm-$VERSION"
if [[ -x $BIN ]]; then echo "$BIN"; exit 0; fi
mkdir -p "$HERALD_CACHE/bin"
echo "install-helm: building helm $VERSION with go install (first time only)" >&2
tmp="$(mktemp -d)"
GOBIN="$tmp" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$VERSION" >&2
mv "$tmp/helm" "$BIN"
rmdir "$tmp"
echo "$BIN"
