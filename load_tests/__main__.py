"""``python -m load_tests SCENARIO [--target HOST:PORT] [--out DIR] [...]``.

Without ``--target`` each scenario starts its own local mesh (etcd, runtime processes
and a router process on 127.0.0.1), so every scenario is one command. Each run writes
``results.json`` and PNG plots to ``--out`` (default ``load_tests/results/<scenario>``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys

MODULES = ("overhead", "zipf_cache", "scale", "cold_storm", "churn", "stream", "churn_cost", "rest", "gateway", "faults", "gateway_tuning")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load_tests", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="scenario", required=True)
    for module in MODULES:
        try:
            mod = importlib.import_module(f"load_tests.scenarios.{module}")
        except ModuleNotFoundError:
            continue
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    args.argv = argv  # recorded in results.json as the exact command
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = asyncio.run(args.func(args))
    doc = json.loads(path.read_text())
    print(json.dumps(doc.get("summary", doc), indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
