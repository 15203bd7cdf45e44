#!/usr/bin/env bash
# Installs meshserve, then runs the local mesh demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/meshserve up --demo --runtimes 2 --capacity 16Mi --listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 "$@"
