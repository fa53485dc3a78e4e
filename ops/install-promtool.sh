#!/usr/bin/env bash
# Install what the Prometheus tests (tests/ops/test_observability.py, tests/test_deploy_files.py) need from
# the system: promtool, from Debian's prometheus package (the server it also brings is not started here).
# Idempotent: does nothing when promtool is already on the PATH.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    echo "promtool: $(promtool --version 2>&1 | head -n 1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# Only the tool is wanted: where systemd runs, the package starts a server on :9090; stop it.
if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
echo "promtool: $(promtool --version 2>&1 | head -n 1)"
