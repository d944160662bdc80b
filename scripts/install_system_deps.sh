#!/bin/bash
# Installs the database servers and client tools the demo, tests and benchmarks use (Debian/Ubuntu, idempotent).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in postgresql postgresql-client mariadb-server mariadb-client pgbouncer sysbench python3-venv python3-dev gcc; do
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
# mariadbd and pgbouncer live in /usr/sbin, which is not on every user's PATH
PATH="$PATH:/usr/sbin" command -v mariadbd mariadb-install-db mariadb pgbouncer sysbench >/dev/null \
  || { echo "MariaDB, pgbouncer or sysbench programs missing after install"; exit 1; }
echo "system dependencies OK"
