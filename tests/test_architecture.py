"""Dependencies point router/puller -> mesh, never back (import-linter contract)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_lists_every_subcommand() -> None:
    from mesh.cli import COMMANDS, build_parser

    parser = build_parser()
    help_text = parser.format_help()
    for name in ("up", "runtime", "router", "pull", "register", "unregister", "status",
                 "models", "infer", "cluster", "policy"):
        assert name in COMMANDS and name in help_text
