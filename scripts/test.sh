#!/usr/bin/env bash
# Installs what the tests need, then runs them. The fixtures start their own
# etcd, S3-compatible server and runtime processes on 127.0.0.1 (free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
