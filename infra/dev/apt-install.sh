#!/usr/bin/env bash
# apt-install.sh PACKAGE... : installs Debian packages (as root, or with
# sudo) without recommends, and stops any service a package started where an
# init system runs (the tests start their own instances). Used by the
# install-*.sh scripts when what they install is missing.
set -euo pipefail
sudo=""
if [[ $(id -u) != 0 ]]; then sudo="sudo"; fi
echo "apt-install: installing Debian's $*" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
if command -v systemctl >/dev/null 2>&1; then
    for service in "$@"; do
        if systemctl is-active --quiet "$service" 2>/dev/null; then
            $sudo systemctl stop "$service" >&2 || true
        fi
    done
fi
