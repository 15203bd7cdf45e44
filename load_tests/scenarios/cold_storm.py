"""cold-storm: hundreds of registered, never-loaded models all requested at once.

Every model gets its first request in the same instant (one wave, nothing bounded on
the client side), so the router's single-flight loads, placement and the runtimes'
load concurrency are what is measured: the distribution of time to first inference,
errors by code, and the loads the mesh reports. A second wave to the same models
(all loaded, if they fit) shows the warm latency beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from load_tests import harness, plots
from load_tests.generator import grpc_sender, timed_call
from load_tests.probe import MeshProbe, delta
from load_tests.recorder import Recorder
from load_tests.workload import make_models, register_all

NAME = "cold-storm"
HELP = "hundreds of models requested for the first time at once: time to first inference"


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=2, capacity="1Gi")
    p.add_argument("--models", type=int, default=300)
    p.add_argument("--size-bytes", type=int, default=0, help="model weights (0 = the 70 KB tiny MLP)")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline of each request (s)")


async def _wave(name: str, send: object, ids: list[str], payloads: dict[str, bytes]) -> tuple[Recorder, float]:
    rec = Recorder(name)
    t0 = time.perf_counter()
    await asyncio.gather(*(timed_call(send, m, payloads[m], t0, t0, rec) for m in ids))  # type: ignore[arg-type]
    return rec, time.perf_counter() - t0


async def run(args: argparse.Namespace) -> Path:
    out = harness.out_dir(args, NAME)
    async with harness.open_mesh(args) as mesh:
        models = make_models(mesh.work_dir / "models", args.models, size_bytes=args.size_bytes, prefix=f"{mesh.tag}storm",
                             seed=args.seed)
        async with mesh.channel() as ch:
            reg = await register_all(ch, models)
            probe = MeshProbe(ch, mesh.router_metrics)
            before = await probe.snapshot()
            send = grpc_sender(ch, timeout_s=args.timeout)
            cold, cold_s = await _wave("first request (cold)", send, models.ids, models.payloads)
            after_cold = await probe.snapshot()
            warm, warm_s = await _wave("second request (warm)", send, models.ids, models.payloads)
            await asyncio.sleep(1.2)  # instance records refresh once a second
            after = await probe.snapshot()
    summary = {
        "models": args.models, "model_file_bytes": models.file_bytes, "registration": reg,
        "time_to_first_inference": cold.summary() | {"wave_s": round(cold_s, 3)},
        "second_wave": warm.summary() | {"wave_s": round(warm_s, 3)},
        "mesh_during_cold_wave": delta(before, after_cold), "mesh_during_warm_wave": delta(after_cold, after),
        "models_loaded_after": {k: v["model_count"] for k, v in after["instances"].items()},
    }
    pngs = [plots.latency_cdf([cold, warm], out / "latency_cdf.png",
                              f"cold-storm: {args.models} models, first request at once"),
            plots.throughput([cold, warm], out / "throughput.png", "cold-storm: completions per second")]
    return harness.write_results(out, NAME, args, {"summary": summary}, pngs)
