"""rest: the same tiny-model request over gRPC, V2 REST JSON, V2 REST binary (Triton's
extension) and KServe V1 ``:predict``, through the same router, in one run.

Per path, as in ``overhead``: an open-loop phase (Poisson at ``--rate``) for p50/p99, then
a closed-loop phase (``--callers``) for saturated req/s, the paths taking turns for
``--rounds`` rounds. Bodies are encoded once up front and responses are read but not
decoded, on every path, so the client's share is alike and the differences are the
router's. Router and runtime CPU per saturated request are reported per path.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from load_tests import harness, plots
from load_tests.generator import Send, grpc_sender
from load_tests.probe import MeshProbe
from load_tests.scenarios.overhead import Way as Turn  # one path's open + closed loop rounds
from load_tests.workload import make_models, register_all
from mesh import modelgen
from router.rest.v2 import HEADER_LENGTH

NAME = "rest"
HELP = "gRPC vs REST JSON vs REST binary vs V1 predict through the same router, tiny model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=1, capacity="1Gi")
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s per path")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each phase in each round")
    p.add_argument("--rounds", type=int, default=2, help="turns each path takes (pooled)")
    p.add_argument("--callers", type=int, default=8, help="closed-loop concurrent callers (saturation)")
    p.add_argument("--warmup", type=int, default=200, help="requests per path before measuring")


class HTTPStatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def rest_sender(session: aiohttp.ClientSession, path_of: dict[str, str], headers: dict[str, str]) -> Send:
    async def send(model: str, body: bytes) -> Any:
        async with session.post(path_of[model], data=body, headers=headers) as r:
            data = await r.read()
            if r.status != 200:
                raise HTTPStatusError(r.status)
            return data

    return send


def bodies(x: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    """(body, headers) per REST path for one input row."""
    tensor = {"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32"}
    as_json = json.dumps({"inputs": [{**tensor, "data": x.reshape(-1).tolist()}]}).encode()
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    v1 = json.dumps({"instances": x.tolist()}).encode()
    ctype = {"Content-Type": "application/json"}
    return {"rest-json": (as_json, ctype),
            "rest-binary": (head + x.astype(np.float32).tobytes(),
                            {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}),
            "rest-v1": (v1, ctype)}


async def run(args: argparse.Namespace) -> Path:
    out = harness.out_dir(args, NAME)
    async with harness.open_mesh(args, rest=True) as mesh:
        if not mesh.rest_target:
            raise SystemExit("the rest scenario needs the router's REST port: give --rest-target with --target")
        models = make_models(mesh.work_dir / "models", 1, prefix=f"{mesh.tag}rest", seed=args.seed)
        model = models.ids[0]
        x = modelgen.sample_input(modelgen.MlpSpec(hidden=124, seed=args.seed * 1000), batch=1, seed=args.seed)
        connector = aiohttp.TCPConnector(limit=max(64, args.callers * 2))
        async with mesh.channel() as ch, aiohttp.ClientSession(f"http://{mesh.rest_target}", connector=connector,
                                                                timeout=aiohttp.ClientTimeout(total=60)) as http:
            codes = await register_all(ch, models)
            await grpc_sender(ch)(model, models.payloads[model])  # loads it
            status = await MeshProbe(ch).cluster()
            holder = next(i for i in status.instances if model in i.model_ids)
            pids = {"client": os.getpid()}
            if mesh.local is not None and mesh.local.router_proc is not None:
                pids |= {"router": mesh.local.router_proc.proc.pid,
                         "runtime": next(rp.proc.pid for rp in mesh.local.procs if rp.instance_id == holder.instance_id)}
            quoted = model.replace("/", "%2F")
            urls = {"rest-json": f"/v2/models/{quoted}/infer", "rest-binary": f"/v2/models/{quoted}/infer",
                    "rest-v1": f"/v1/models/{quoted}:predict"}
            paths: list[tuple[Turn, dict[str, bytes]]] = [(Turn("grpc", grpc_sender(ch)), models.payloads)]
            for name, (body, headers) in bodies(x).items():
                paths.append((Turn(name, rest_sender(http, {model: urls[name]}, headers)), {model: body}))
            t0 = time.perf_counter()
            for i in range(args.rounds):
                for turn, payloads in paths:
                    await turn.round([model], payloads, args, i, pids, t0)

    summary = {turn.lat.name: turn.summary() for turn, _ in paths}
    g = summary["grpc"]

    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else 0.0

    ratios = {f"{k}_over_grpc": {
        "p50": ratio(v["open_loop"]["latency_ms"]["p50"], g["open_loop"]["latency_ms"]["p50"]),
        "p99": ratio(v["open_loop"]["latency_ms"]["p99"], g["open_loop"]["latency_ms"]["p99"]),
        "saturated_rps": ratio(v["saturated"]["ok_per_s"], g["saturated"]["ok_per_s"]),
    } for k, v in summary.items() if k != "grpc"}
    lats = [t.lat for t, _ in paths]
    sats = [t.sat for t, _ in paths]
    pngs = [plots.latency_cdf(lats, out / "latency_cdf.png", f"rest: open loop {args.rate:g} req/s, tiny model"),
            plots.bars({k: v["saturated"]["ok_per_s"] for k, v in summary.items()}, out / "saturated_rps.png",
                       f"saturated throughput, {args.callers} callers", "req/s")]
    body = {"summary": {"ratios": ratios, **summary}, "registration": codes, "model_file_bytes": models.file_bytes,
            "uptime": _uptime()}
    return harness.write_results(out, NAME, args, body, pngs)


def _uptime() -> str:
    try:
        return "load average " + " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return ""
