"""`meshserve apply|get|delete`: KServe resources on the mesh (README "From KServe / ModelMesh").

Each goes through the router's MeshAdmin (Apply/Get/DeleteResources), which keeps
the resources in the registry and computes their status from its mirror.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import grpc

from mesh.cli.client_cmds import with_router
from mesh.cli.common import read_file_arg
from mesh.errors import InvalidArgument

HELPS = {
    "apply": "apply KServe InferenceService / ServingRuntime / ClusterServingRuntime manifests (YAML or JSON)",
    "get": "show applied KServe resources and their status (get isvc [NAME])",
    "delete": "delete KServe resources (delete -f FILE, or delete isvc NAME)",
}
_GROUP = "serving.kserve.io"


def help_for(name: str) -> str:
    return HELPS[name]


def add_arguments_for(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", help="router HOST:PORT (env MESHSERVE_ROUTER; default 127.0.0.1:8033)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    if name in ("apply", "delete"):
        p.add_argument("-f", "--filename", action="append", default=[], required=name == "apply", metavar="FILE",
                       help="manifest file, '-' for stdin (repeatable)")
    if name in ("get", "delete"):
        p.add_argument("kind", nargs="?", default="" if name == "delete" else "isvc",
                       help="isvc (InferenceService), servingruntime or clusterservingruntime")
        p.add_argument("name", nargs="?", default="", help="one resource (get: default all of the kind)")


def _manifests(args: argparse.Namespace) -> str:
    return "\n---\n".join(read_file_arg(f) for f in args.filename)


def _warn(resources: Any) -> None:
    for r in resources:
        for w in r.warnings:
            print(f"Warning: {r.kind.lower()} {r.name}: {w}", file=sys.stderr)


def _apply(args: argparse.Namespace, channel: grpc.Channel, timeout: float) -> int:
    from mesh.proto.meshserve.v1 import admin_pb2 as adm
    from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc

    out = adm_grpc.MeshAdminStub(channel).ApplyResources(
        adm.ApplyResourcesRequest(manifests=_manifests(args)), timeout=timeout)
    _warn(out.resources)
    if args.json:
        print(json.dumps([{"kind": r.kind, "name": r.name, "outcome": r.outcome, "warnings": list(r.warnings)}
                          for r in out.resources], indent=2))
    else:
        for r in out.resources:
            print(f"{r.kind.lower()}.{_GROUP}/{r.name} {r.outcome}")
    return 0


def _delete(args: argparse.Namespace, channel: grpc.Channel, timeout: float) -> int:
    from mesh.proto.meshserve.v1 import admin_pb2 as adm
    from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc

    if not args.filename and not (args.kind and args.name):
        raise InvalidArgument("delete needs -f FILE or a kind and a name, e.g. meshserve delete isvc sklearn-iris")
    req = adm.DeleteResourcesRequest(manifests=_manifests(args) if args.filename else "",
                                     kind=args.kind, name=args.name)
    out = adm_grpc.MeshAdminStub(channel).DeleteResources(req, timeout=timeout)
    if args.json:
        print(json.dumps([{"kind": r.kind, "name": r.name, "outcome": r.outcome} for r in out.resources], indent=2))
    else:
        for r in out.resources:
            print(f"{r.kind.lower()}.{_GROUP}/{r.name} {r.outcome}")
    missing = [r for r in out.resources if r.outcome == "not found"]
    for r in missing:
        print(f"meshserve delete: {r.kind} {r.name!r} is not applied", file=sys.stderr)
    return 1 if missing else 0


def _isvc_line(obj: dict[str, Any]) -> dict[str, str]:
    st = obj.get("status", {})
    ms = st.get("modelStatus", {})
    ready: dict[str, str] = next((c for c in st.get("conditions", []) if c.get("type") == "Ready"), {})
    copies = ms.get("copies", {})
    return {"NAME": obj["metadata"]["name"], "URL": st.get("url", ""), "READY": ready.get("status", "Unknown"),
            "ACTIVE": ms.get("states", {}).get("activeModelState", ""),
            "TARGET": ms.get("states", {}).get("targetModelState", ""),
            "TRANSITION": ms.get("transitionStatus", ""),
            "COPIES": f"{copies.get('totalCopies', 0) - copies.get('failedCopies', 0)}/{copies.get('totalCopies', 0)}",
            "REASON": ready.get("reason", "")}


def _table(lines: list[dict[str, str]]) -> list[str]:
    if not lines:
        return []
    cols = list(lines[0])
    width = {c: max(len(c), *(len(x[c]) for x in lines)) for c in cols}
    return ["  ".join(f"{c:<{width[c]}}" for c in cols).rstrip()] + [
        "  ".join(f"{x[c]:<{width[c]}}" for c in cols).rstrip() for x in lines]


def _detail(obj: dict[str, Any], warnings: list[str]) -> list[str]:
    st = obj.get("status", {})
    ms = st.get("modelStatus", {})
    pred = st.get("components", {}).get("predictor", {})
    line = _isvc_line(obj)
    rows = [f"Name:        {line['NAME']}", f"Namespace:   {obj['metadata'].get('namespace', '')}",
            f"Ready:       {line['READY']}" + (f" ({line['REASON']})" if line["REASON"] else ""),
            f"URL:         {st.get('url', '')}", f"gRPC URL:    {pred.get('grpcUrl', '')}",
            f"REST URL:    {pred.get('restUrl', '')}",
            f"Transition:  {ms.get('transitionStatus', '')}",
            f"Active:      {line['ACTIVE']}", f"Target:      {line['TARGET'] or '-'}", f"Copies:      {line['COPIES']}"]
    failure = ms.get("lastFailureInfo")
    if failure:
        rows.append(f"Last failure: {failure.get('reason')}: {failure.get('message')}"
                    + (f" (on {failure['location']})" if failure.get("location") else ""))
    rows += [f"Warning:     {w}" for w in warnings]
    return rows


def _get(args: argparse.Namespace, channel: grpc.Channel, timeout: float) -> int:
    from mesh.proto.meshserve.v1 import admin_pb2 as adm
    from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc

    out = adm_grpc.MeshAdminStub(channel).GetResources(
        adm.GetResourcesRequest(kind=args.kind, name=args.name), timeout=timeout)
    objs = [json.loads(r.object_json) for r in out.resources]
    if args.json:
        print(json.dumps(objs[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": objs},
                         indent=2, sort_keys=True))
        return 0
    if args.name and out.resources and out.resources[0].kind == "InferenceService":
        print("\n".join(_detail(objs[0], list(out.resources[0].warnings))))
    elif out.resources and out.resources[0].kind == "InferenceService":
        print("\n".join(_table([_isvc_line(o) for o in objs])))
    elif objs:
        print("\n".join(_table([{
            "NAME": o["metadata"]["name"], "KIND": o["kind"],
            "MULTIMODEL": str(o["spec"].get("multiModel", False)).lower(),
            "FORMATS": ",".join(f"{f.get('name')}{':' + str(f['version']) if f.get('version') else ''}"
                                f"{'' if f.get('autoSelect') else ' (no autoSelect)'}"
                                for f in o["spec"].get("supportedModelFormats", [])),
        } for o in objs])))
    else:
        print(f"no {args.kind} applied", file=sys.stderr)
    return 0


_COMMANDS = {"apply": _apply, "get": _get, "delete": _delete}


def run(args: argparse.Namespace) -> int:
    return with_router(args, _COMMANDS[args.command])
