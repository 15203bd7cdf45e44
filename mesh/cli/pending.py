"""Subcommands whose implementation has not landed yet say so plainly."""

from __future__ import annotations

import argparse

from mesh.errors import Unimplemented


def not_yet(name: str, issue: int) -> int:
    raise Unimplemented(f"'{name}' is not in this build yet (tracked by issue #{issue})")


def add_passthrough(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


