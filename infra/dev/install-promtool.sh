#!/usr/bin/env bash
# Installs Debian's `prometheus` package for its `promtool` (the alert rules'
# check) when missing; no Prometheus server is started. Prints its path.
set -euo pipefail
if [[ -x /usr/bin/promtool ]]; then echo /usr/bin/promtool; exit 0; fi
sudo=""
if [[ $(id -u) != 0 ]]; then sudo="sudo"; fi
echo "install-promtool: installing Debian's prometheus (for promtool)" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >&2
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $sudo systemctl stop prometheus >&2 || true
fi
echo /usr/bin/promtool
