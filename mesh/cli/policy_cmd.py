"""`meshserve policy`."""

from __future__ import annotations

import argparse

from mesh.cli.pending import add_passthrough, not_yet

HELP = "(not in this build yet: issue #7)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_passthrough(p)


def run(args: argparse.Namespace) -> int:
    return not_yet("policy", 7)
