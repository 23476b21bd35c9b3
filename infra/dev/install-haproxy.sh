#!/usr/bin/env bash
# Installs Debian's HAProxy when it is missing (the load-balancer test runs
# it in front of herald nodes; it is not started as a service). Prints its
# path.
set -euo pipefail
for p in /usr/sbin/haproxy /usr/local/sbin/haproxy; do
    if [[ -x $p ]]; then echo "$p"; exit 0; fi
done
sudo=""
if [[ $(id -u) != 0 ]]; then sudo="sudo"; fi
echo "install-haproxy: installing Debian's haproxy" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends haproxy >&2
# The package may start its own service where an init system runs; herald's
# test starts its own instance and needs nothing of it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet haproxy 2>/dev/null; then
    $sudo systemctl stop haproxy >&2 || true
fi
echo /usr/sbin/haproxy
