"""Client verbs against a router: register, unregister, status, models, infer, cluster.

Each talks gRPC to ``--router`` (env ``MESHSERVE_ROUTER``, default
127.0.0.1:8033) and prints a human table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import grpc
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.cli.connect import add_connection_arguments, overrides, report, router_channel
from mesh.errors import InvalidArgument

HELPS = {
    "register": "register a model with the mesh (ModelMesh registerModel)",
    "unregister": "unregister a model (unloads its copies)",
    "status": "show a model's (or with --vmodel, a vmodel's) status and copies",
    "models": "list registered models with their status",
    "infer": "send one inference request through the router and print the outputs",
    "cluster": "show runtime instances, capacity and loaded copies",
    "vmodel": "weighted traffic splits of a vmodel: vmodel split NAME MODEL=WEIGHT... (canary, blue-green)",
}


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="ignore")
    #: Router HOST:PORT the client verbs talk to.
    router: str = "127.0.0.1:8033"
    #: Seconds to wait for one call (a sync register or a cold inference may load a model).
    timeout_s: float = 120.0
    #: Bearer token sent on every call (routers with --auth-token-file); never printed.
    token: str = ""
    #: PEM CA of the router's certificate ("" = plaintext), and an optional client certificate.
    tls_ca: str = ""
    client_cert: str = ""
    client_key: str = ""


def help_for(name: str) -> str:
    return HELPS[name]


def add_arguments_for(name: str, p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if name in ("register", "unregister", "status", "infer"):
        p.add_argument("id", help="model id" + (" (or vmodel id with --vmodel)" if name in ("status", "infer") else ""))
    if name == "register":
        p.add_argument("--type", required=True, help="model type: onnx, pytorch, sklearn, xgboost, lightgbm (any case, KServe's names), a plugin's "
                       "type, or package.module:Class")
        p.add_argument("--path", required=True, help="storage URI or local path of the model")
        p.add_argument("--key", default="", help="storage key JSON (storage_key, storage_params, sha256...)")
        p.add_argument("--load-now", action="store_true", help="start loading at once")
        p.add_argument("--sync", action="store_true", help="with --load-now: wait until loaded")
        p.add_argument("--min-copies", type=int, default=0, help="copies kept loaded even when idle")
        p.add_argument("--max-copies", type=int, default=0, help="most copies scaling may add (0: no limit)")
        p.add_argument("--label", action="append", default=[], metavar="K=V",
                       help="model label (repeatable); require.K=V places it only on runtimes labelled K=V")
    if name in ("status", "infer"):
        p.add_argument("--vmodel", action="store_true", help="the id names a vmodel")
    if name == "vmodel":
        p.add_argument("action", choices=["split"], help="split: route the vmodel to these models by weight")
        p.add_argument("id", help="vmodel id (created if it does not exist)")
        p.add_argument("targets", nargs="+", metavar="MODEL=WEIGHT",
                       help="registered models and their relative weights, e.g. churn-v1=90 churn-v2=10")
        p.add_argument("--owner", default="", help="the vmodel's owner, as in setVModel")
        p.add_argument("--no-wait", action="store_true", help="return at once instead of when the split is live")
    if name == "models":
        p.add_argument("--prefix", default="", help="only ids starting with this")
        p.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    if name == "infer":
        p.add_argument("--input", required=True, help="input tensor as JSON, e.g. '[[1.0, 2.0]]'")
        p.add_argument("--input-name", help="input name (default: the model's first input)")
        p.add_argument("--datatype", help="V2 datatype (default: the model's, else FP32)")


def _emit(args: argparse.Namespace, data: Any, table: list[str]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else "\n".join(table))


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def run(args: argparse.Namespace) -> int:
    return with_router(args, _COMMANDS[args.command])


def with_router(args: argparse.Namespace, command: Callable[[argparse.Namespace, grpc.Channel, float], int]) -> int:
    """Runs ``command(args, channel, timeout_s)`` against ``--router``; RPC errors become a one-line message."""
    settings = ClientSettings(**overrides(args))
    channel = router_channel(settings, options=[("grpc.max_receive_message_length", 256 * 2**20)])
    try:
        return command(args, channel, settings.timeout_s)
    except grpc.RpcError as e:
        return report(e, channel, settings, args.command)
    finally:
        channel.close()


def _status_rows(info: Any) -> tuple[dict[str, Any], list[str]]:
    from mesh.proto.mmesh import model_mesh_pb2 as mm

    name = mm.ModelStatusInfo.ModelStatus.Name
    data = {"status": name(info.status), "errors": list(info.errors),
            "copies": [{"location": c.location, "status": name(c.copyStatus), "time": c.time} for c in info.modelCopyInfos]}
    rows = [f"status: {data['status']}"]
    rows += [f"  copy on {c['location']}: {c['status']}" for c in data["copies"]]
    rows += [f"  error: {e}" for e in data["errors"]]
    return data, rows


def _register(args: argparse.Namespace, channel: grpc.Channel, timeout: float) -> int:
    from mesh.proto.mmesh import model_mesh_pb2 as mm
    from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc

    labels = {}
    for item in args.label:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InvalidArgument(f"--label {item!r}: expected KEY=VALUE")
        labels[k] = v
    if args.min_copies < 0 or args.max_copies < 0:
        raise InvalidArgument("--min-copies and --max-copies must not be negative")
    configured = bool(labels or args.min_copies or args.max_copies)
    load = args.load_now or args.sync
    stub = mm_grpc.ModelMeshStub(channel)
    info = stub.registerModel(mm.RegisterModelRequest(
        modelId=args.id, modelInfo=mm.ModelInfo(type=args.type, path=args.path, key=args.key),
        loadNow=load and not configured, sync=args.sync and not configured), timeout=timeout)
    if configured:
        from mesh.proto.meshserve.v1 import admin_pb2 as adm
        from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc

        # Copy limits and labels first, so the first load already honours them.
        adm_grpc.MeshAdminStub(channel).SetModelConfig(adm.SetModelConfigRequest(
            model_id=args.id, min_copies=args.min_copies, max_copies=args.max_copies, labels=labels), timeout=timeout)
        if load:
            info = stub.ensureLoaded(mm.EnsureLoadedRequest(modelId=args.id, sync=args.sync), timeout=timeout)
    data, rows = _status_rows(info)
    _emit(args, {"model_id": args.id, **data}, [f"registered {args.id}", *rows])
    if args.sync and info.status != mm.ModelStatusInfo.LOADED:
        print(f"meshserve register: {args.id} is registered but did not load (see the errors above)", file=sys.stderr)
        return 1
    return 0


def _unregister(args: argparse.Namespace, channel: grpc.Channel, timeout: float) -> int:
    from mesh.proto.mmesh import model_mesh_pb2 as mm
    from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc

    mm_grpc.ModelMeshStub(channel).unregisterModel(mm.UnregisterModelRequest(modelId=args.id), timeout=timeout)
    _emit(args, {"model_id": args.id, "unregistered": True}, [f"unregistered {args.id}"])
    return 0


def _status(args: argparse.Namespace, channel: grpc.Channel, timeout: float) -> int:
    from mesh.proto.mmesh import model_mesh_pb2 as mm
    from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc

    stub = mm_grpc.ModelMeshStub(channel)
    if args.vmodel:
        v = stub.getVModelStatus(mm.GetVModelStatusRequest(vModelId=args.id), timeout=timeout)
        active, arows = _status_rows(v.activeModelStatus)
        data = {"vmodel_id": args.id, "status": mm.VModelStatusInfo.VModelStatus.Name(v.status),
                "active_model": v.activeModelId, "target_model": v.targetModelId, "active": active}
        split, srows = _split_rows(v)
        if split:
            data["split"] = split
        _emit(args, data, [f"vmodel {args.id}: {data['status']}", f"  active {v.activeModelId}, target {v.targetModelId}",
                           *("  " + r for r in arows), *srows])
        return 0 if v.status != mm.VModelStatusInfo.NOT_FOUND else 1
    info = stub.getModelStatus(mm.GetStatusRequest(modelId=args.id), timeout=timeout)
    data, rows = _status_rows(info)
    _emit(args, {"model_id": args.id, **data}, [f"model {args.id}", *rows])
    return 0 if info.status != mm.ModelStatusInfo.NOT_FOUND else 1


def _models(args: argparse.Namespace, channel: grpc.Channel, timeout: float) -> int:
    from mesh.proto.meshserve.v1 import admin_pb2 as adm
    from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc

    stub = adm_grpc.MeshAdminStub(channel)
    out: list[Any] = []
    token = ""
    while True:
        page = stub.ListModels(adm.ListModelsRequest(prefix=args.prefix, page_size=500, page_token=token), timeout=timeout)
        out.extend(page.models)
        token = page.next_page_token
        if not token or (args.limit and len(out) >= args.limit):
            break
    if args.limit:
        out = out[: args.limit]
    data = [{"model_id": m.model_id, "type": m.type, "status": m.status, "size_bytes": m.size_bytes,
             "copies": [c.instance_id for c in m.copies if c.state == "LOADED"], "path": m.path} for m in out]
    width = max([len(d["model_id"]) for d in data] + [8])
    rows = [f"{'MODEL':<{width}}  {'TYPE':<8} {'STATUS':<15} {'SIZE':>10}  COPIES"]
    rows += [f"{d['model_id']:<{width}}  {d['type']:<8} {d['status']:<15} {_fmt_bytes(d['size_bytes']):>10}  "
             f"{','.join(d['copies']) or '-'}" for d in data]
    rows.append(f"{len(data)} model(s)")
    _emit(args, data, rows)
    return 0


def _cluster(args: argparse.Namespace, channel: grpc.Channel, timeout: float) -> int:
    from mesh.proto.meshserve.v1 import admin_pb2 as adm
    from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc

    c = adm_grpc.MeshAdminStub(channel).GetClusterStatus(adm.GetClusterStatusRequest(), timeout=timeout)
    data = {"registered_models": c.registered_models, "loaded_copies": c.loaded_copies,
            "capacity_bytes": c.capacity_bytes, "used_bytes": c.used_bytes,
            "instances": [{"instance_id": i.instance_id, "endpoint": i.endpoint, "capacity_bytes": i.capacity_bytes,
                           "used_bytes": i.used_bytes, "model_count": i.model_count, "models": list(i.model_ids),
                           "shutting_down": i.shutting_down, "metrics_endpoint": i.metrics_endpoint}
                          for i in c.instances]}
    rows = [f"{c.registered_models} registered model(s), {c.loaded_copies} loaded cop(ies), "
            f"{_fmt_bytes(c.used_bytes)} used of {_fmt_bytes(c.capacity_bytes)}",
            f"{'INSTANCE':<24} {'ENDPOINT':<22} {'USED':>10} {'CAPACITY':>10} {'MODELS':>6}  STATE"]
    for i in c.instances:
        rows.append(f"{i.instance_id:<24} {i.endpoint:<22} {_fmt_bytes(i.used_bytes):>10} "
                    f"{_fmt_bytes(i.capacity_bytes):>10} {i.model_count:>6}  "
                    f"{'draining' if i.shutting_down else 'serving'}")
    _emit(args, data, rows)
    return 0


def _infer(args: argparse.Namespace, channel: grpc.Channel, timeout: float) -> int:
    import numpy as np
    from tritonclient.grpc import service_pb2 as v2
    from tritonclient.grpc import service_pb2_grpc as v2_grpc
    from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

    try:
        value = json.loads(args.input)
    except ValueError as e:
        raise InvalidArgument(f"--input is not JSON ({e}); e.g. --input '[[1.0, 2.0]]'") from None
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    md = (("mm-vmodel-id" if args.vmodel else "mm-model-id", args.id),)
    meta = stub.ModelMetadata(v2.ModelMetadataRequest(name=args.id), metadata=md, timeout=timeout)
    first = meta.inputs[0] if meta.inputs else None
    name = args.input_name or (first.name if first else "INPUT0")
    datatype = args.datatype or next((i.datatype for i in meta.inputs if i.name == name), "FP32")
    np_type = triton_to_np_dtype(datatype)
    if np_type is None or datatype == "BYTES":
        raise InvalidArgument(f"datatype {datatype!r} is not supported by 'meshserve infer'")
    try:
        arr = np.asarray(value, dtype=np_type)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"--input does not convert to {datatype}: {e}") from None
    req = v2.ModelInferRequest(model_name=args.id)
    req.inputs.add(name=name, datatype=np_to_triton_dtype(arr.dtype), shape=list(arr.shape))
    req.raw_input_contents.append(arr.tobytes())
    resp = stub.ModelInfer(req, metadata=md, timeout=timeout)
    outputs = {}
    for i, out in enumerate(resp.outputs):
        dtype = triton_to_np_dtype(out.datatype)
        raw = resp.raw_output_contents[i] if i < len(resp.raw_output_contents) else b""
        outputs[out.name] = np.frombuffer(raw, dtype=dtype).reshape(list(out.shape)).tolist()
    _emit(args, {"model": resp.model_name, "outputs": outputs},
          [f"model {resp.model_name}"] + [f"{k}: {json.dumps(v)}" for k, v in outputs.items()])
    return 0


def _split_rows(v: Any) -> tuple[list[dict[str, Any]], list[str]]:
    from mesh.proto.mmesh import model_mesh_pb2 as mm

    total = sum(t.weight for t in v.trafficSplit) or 1
    split = [{"model_id": t.modelId, "weight": t.weight, "live": t.live,
              "status": mm.ModelStatusInfo.ModelStatus.Name(t.modelStatus.status)} for t in v.trafficSplit]
    rows = [f"  split {t['model_id']}: weight {t['weight']} ({100 * t['weight'] / total:.1f} %), "
            f"{t['status']}{'' if t['live'] else ', waiting to load'}" for t in split]
    return split, rows


def _vmodel(args: argparse.Namespace, channel: grpc.Channel, timeout: float) -> int:
    from mesh.proto.meshserve.v1 import admin_pb2 as adm
    from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc
    from mesh.proto.mmesh import model_mesh_pb2 as mm

    req = adm.SetTrafficSplitRequest(vmodel_id=args.id, owner=args.owner, sync=not args.no_wait)
    for item in args.targets:
        model_id, sep, weight = item.rpartition("=")
        if not sep or not model_id or not weight.isdigit():
            raise InvalidArgument(f"split target {item!r} is not MODEL=WEIGHT (WEIGHT a whole number >= 0)")
        req.targets.add(model_id=model_id, weight=int(weight))
    v = adm_grpc.MeshAdminStub(channel).SetTrafficSplit(req, timeout=timeout)
    status = mm.VModelStatusInfo.VModelStatus.Name(v.status)
    split, rows = _split_rows(v)
    errors = list(v.targetModelStatus.errors)
    _emit(args, {"vmodel_id": args.id, "status": status, "split": split, "errors": errors},
          [f"vmodel {args.id}: {status}", *rows, *(f"  error: {e}" for e in errors)])
    return 1 if v.status == mm.VModelStatusInfo.TRANSITION_FAILED else 0


_COMMANDS = {"register": _register, "unregister": _unregister, "status": _status, "models": _models,
             "infer": _infer, "cluster": _cluster, "vmodel": _vmodel}
