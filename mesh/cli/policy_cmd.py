"""`meshserve policy get|set|validate`: the policy document (README "Policies").

``get`` and ``set`` go through the router's MeshAdmin Get/SetPolicy; ``validate``
checks a file offline (no router needed) unless ``--router-side`` asks the router
(which also resolves user policies' import paths in the router's environment).
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from mesh.cli.client_cmds import ClientSettings
from mesh.cli.common import read_file_arg
from mesh.cli.connect import add_connection_arguments, overrides, report, router_channel
from mesh.errors import InvalidArgument

HELP = "show, set or validate the policy document (eviction, placement, router tunables)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["get", "set", "validate"],
                   help="get: the document in effect; set FILE: validate and store it (every router and runtime "
                        "applies it within a second); validate [FILE]: check it offline")
    p.add_argument("file", nargs="?", help="JSON or YAML document; '-' or none (validate) reads stdin")
    add_connection_arguments(p)
    p.add_argument("--expected-revision", type=int, default=0,
                   help="set: only if the stored document is still at this revision (from get)")
    p.add_argument("--router-side", action="store_true", help="validate: ask the router instead of checking locally")
    p.add_argument("--json", action="store_true", help="print JSON only")


_read = read_file_arg


def _print(args: argparse.Namespace, document: str, revision: int, what: str) -> None:
    doc = json.loads(document)
    if args.json:
        print(json.dumps({"revision": revision, "document": doc}, indent=2, sort_keys=True))
        return
    if what == "valid":
        print("valid; as the processes will read it:")
    else:
        print(f"{what} (revision {revision}{': not set in etcd, the router runs on its --policy-file or the defaults' if not revision else ''})")
    print(json.dumps(doc, indent=2, sort_keys=True))


def run(args: argparse.Namespace) -> int:
    from mesh.policy.document import dumps, parse_document

    if args.action == "set" and not args.file:
        raise InvalidArgument("policy set needs a FILE (or '-' for stdin)")
    if args.action == "validate" and not args.router_side:
        doc = parse_document(_read(args.file), source=args.file or "stdin")
        _print(args, dumps(doc), 0, "valid")
        return 0
    from mesh.proto.meshserve.v1 import admin_pb2 as adm
    from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc

    settings = ClientSettings(**overrides(args))
    channel = router_channel(settings)
    try:
        stub = adm_grpc.MeshAdminStub(channel)
        if args.action == "get":
            got = stub.GetPolicy(adm.GetPolicyRequest(), timeout=settings.timeout_s)
            _print(args, got.document, got.revision, "policy")
            return 0
        req = adm.SetPolicyRequest(document=_read(args.file), expected_revision=args.expected_revision,
                                   validate_only=args.action == "validate")
        out = stub.SetPolicy(req, timeout=settings.timeout_s)
        _print(args, out.document, out.revision, "valid" if args.action == "validate" else "stored")
        return 0
    except grpc.RpcError as e:
        return report(e, channel, settings, f"policy {args.action}")
    finally:
        channel.close()
