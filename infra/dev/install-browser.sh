#!/usr/bin/env bash
# The browser side of the tests: Debian's Chromium (driven headless by
# playwright-core; a test tool's own browser download does not work here),
# installed when missing, and the TypeScript client's npm packages (pinned
# by clients/typescript/package-lock.json) installed and built. Prints the
# Chromium binary's path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
chromium=""
for p in /usr/bin/chromium /usr/bin/chromium-browser; do
    if [[ -x $p ]]; then chromium="$p"; break; fi
done
if [[ -z $chromium ]]; then
    "$ROOT/infra/dev/apt-install.sh" chromium chromium-driver
    chromium=/usr/bin/chromium
fi
cd "$ROOT/clients/typescript"
echo "install-browser: npm ci and build in clients/typescript" >&2
npm ci --no-audit --no-fund --silent >&2
npm run --silent build >&2
echo "$chromium"
