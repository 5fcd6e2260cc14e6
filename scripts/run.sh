#!/usr/bin/env bash
# Quick start: installs and builds everything (scripts/setup.sh), makes an API
# key on first run (printed once), and runs the controller with embedded
# defaults: SQLite in $POLYDEV_DATA_DIR (default /var/lib/polydev), QEMU with
# KVM when a probe guest runs on it and TCG otherwise, on 127.0.0.1:4000.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
bin=./target/release/polydev
if [ -z "$($bin apikey ls 2>/dev/null)" ]; then
  echo "==> first run: creating an API key (shown once)" >&2
  key=$($bin apikey create --name quickstart)
  echo "API key: $key" >&2
  echo "try: curl -H \"Authorization: Bearer $key\" -d '{\"type\":\"cli\",\"userId\":\"u1\"}' -H 'Content-Type: application/json' http://127.0.0.1:4000/api/vms" >&2
fi
exec $bin serve "$@"
