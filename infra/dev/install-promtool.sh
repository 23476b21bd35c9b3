#!/usr/bin/env bash
# Installs Debian's `prometheus` package for its `promtool` (the alert rules'
# check) when missing; no Prometheus server is started. Prints its path.
set -euo pipefail
if [[ -x /usr/bin/promtool ]]; then echo /usr/bin/promtool; exit 0; fi
"$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" prometheus
echo /usr/bin/promtool
