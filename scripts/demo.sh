#!/usr/bin/env bash
# Installs meshserve, then runs the local mesh demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/meshserve up --once "$@"
