#!/bin/bash
# Installs the database servers and client tools the demo and the tests use (Debian/Ubuntu, idempotent).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in postgresql postgresql-client python3-venv python3-dev gcc; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # package scripts may try to start the system services; the tests start their own private servers
  $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v pgbench >/dev/null || { echo "pgbench missing (postgresql-contrib / postgresql-client)"; exit 1; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null
echo "system dependencies OK"
