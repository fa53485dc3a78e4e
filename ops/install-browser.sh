#!/usr/bin/env bash
# Install what the browser test (tests/browser/) needs from the system: Debian's chromium.
# Idempotent: does nothing when /usr/bin/chromium is already there. Playwright's Python package
# (the `test` extra) drives it; no browser is ever downloaded by Playwright itself.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
