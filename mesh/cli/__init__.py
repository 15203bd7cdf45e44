"""The ``meshserve`` command: one subcommand per module, imported on use.

Each subcommand module defines ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. This package is the entry point that wires router, puller
and the mesh core together, so it (alone in ``mesh``) may import them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mesh.errors import MeshError

#: subcommand -> module. Client verbs talk to a router; the rest start processes.
COMMANDS: dict[str, str] = {
    "up": "mesh.cli.up_cmd",
    "runtime": "mesh.cli.runtime_cmd",
    "router": "mesh.cli.router_cmd",
    "gateway": "mesh.cli.gateway_cmd",
    "pull": "mesh.cli.pull_cmd",
    "register": "mesh.cli.client_cmds",
    "unregister": "mesh.cli.client_cmds",
    "status": "mesh.cli.client_cmds",
    "models": "mesh.cli.client_cmds",
    "infer": "mesh.cli.client_cmds",
    "cluster": "mesh.cli.client_cmds",
    "vmodel": "mesh.cli.client_cmds",
    "policy": "mesh.cli.policy_cmd",
    "apply": "mesh.cli.kserve_cmds",
    "get": "mesh.cli.kserve_cmds",
    "delete": "mesh.cli.kserve_cmds",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshserve",
        description="meshserve: a multi-model serving mesh (ModelMesh-compatible).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        help_text = module.help_for(name) if hasattr(module, "help_for") else module.HELP
        p = sub.add_parser(name, help=help_text, description=help_text)
        if hasattr(module, "add_arguments_for"):
            module.add_arguments_for(name, p)
        else:
            module.add_arguments(p)
        p.set_defaults(_module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except MeshError as e:
        print(f"meshserve {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
