#!/usr/bin/env bash
# Installs Debian's HAProxy when it is missing (the load-balancer test runs
# it in front of herald nodes; it is not started as a service). Prints its
# path.
set -euo pipefail
for p in /usr/sbin/haproxy /usr/local/sbin/haproxy; do
    if [[ -x $p ]]; then echo "$p"; exit 0; fi
done
"$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" haproxy
echo /usr/sbin/haproxy
