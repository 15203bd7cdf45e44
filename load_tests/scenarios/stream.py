"""stream: the same tiny-model requests through the router as unary ModelInfer calls and
over ModelStreamInfer, in one run; saturated req/s and latency per request.

Unary: ``--callers`` closed-loop callers on one channel. Streamed: one stream keeping
``--window`` requests in flight (a new one written as each answer arrives), and the same
with ``--callers`` as the window, so equal concurrency is compared too. The paths take
turns for ``--rounds`` rounds (pooled), so load from elsewhere falls on all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from tritonclient.grpc import service_pb2 as v2

from load_tests import harness, plots
from load_tests.generator import closed_loop, grpc_sender
from load_tests.recorder import Recorder
from load_tests.workload import make_models, register_all

NAME = "stream"
HELP = "unary ModelInfer vs ModelStreamInfer through the router, tiny model"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=1, capacity="1Gi")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each path's turn in each round")
    p.add_argument("--rounds", type=int, default=2, help="turns each path takes (pooled)")
    p.add_argument("--callers", type=int, default=8, help="unary closed-loop callers (and the equal stream window)")
    p.add_argument("--window", type=int, default=64, help="requests in flight on the wide stream")
    p.add_argument("--warmup", type=int, default=300, help="unary requests before measuring")


async def stream_loop(channel: Any, payload: bytes, window: int, seconds: float, rec: Recorder, t0: float) -> None:
    """One stream; ``window`` requests in flight; latency from each write to its answer."""
    call = channel.stream_stream(STREAM)(timeout=seconds + 60)
    sent_at: dict[str, float] = {}
    stop_at = time.perf_counter() + seconds
    slots = asyncio.Semaphore(window)
    req = v2.ModelInferRequest.FromString(payload)

    async def writer() -> None:
        n = 0
        while time.perf_counter() < stop_at:
            await slots.acquire()
            req.id = str(n)
            data = req.SerializeToString()
            sent_at[req.id] = t = time.perf_counter()
            rec.sent(t - t0, req.model_name)
            await call.write(data)
            n += 1
        await call.done_writing()

    async def reader() -> None:
        async for raw in call:
            resp = v2.ModelStreamInferResponse.FromString(raw)
            t_sent = sent_at.pop(resp.infer_response.id)
            now = time.perf_counter()
            rec.done(t_sent - t0, now - t0, "ERROR" if resp.error_message else "OK")
            slots.release()

    start = time.perf_counter()
    await asyncio.gather(writer(), reader())
    rec.active_s += time.perf_counter() - start


async def run(args: argparse.Namespace) -> Any:
    out = harness.out_dir(args, NAME)
    async with harness.open_mesh(args) as mesh:
        models = make_models(mesh.work_dir / "models", 1, prefix=f"{mesh.tag}stream")
        channel = mesh.channel()
        await register_all(channel, models)
        model = models.ids[0]
        send = grpc_sender(channel)
        for _ in range(args.warmup):
            await send(model, models.payloads[model])
        paths = {"unary": Recorder("unary"), f"stream window {args.callers}": Recorder("stream narrow"),
                 f"stream window {args.window}": Recorder("stream wide")}
        t0 = time.perf_counter()
        for _ in range(args.rounds):
            await closed_loop(send, [model], models.payloads, args.callers, args.seconds, paths["unary"], t0=t0)
            for window in (args.callers, args.window):
                await stream_loop(channel, models.payloads[model], window, args.seconds,
                                  paths[f"stream window {window}"], t0)
        await channel.close()
    summary = {name: rec.summary() for name, rec in paths.items()}
    unary = summary["unary"]["ok_per_s"] or 1.0
    body = {"summary": {name: {"ok_per_s": s["ok_per_s"], "p50_ms": s["latency_ms"]["p50"],
                               "p99_ms": s["latency_ms"]["p99"], "errors": s["errors"],
                               "vs_unary": round(s["ok_per_s"] / unary, 3)} for name, s in summary.items()},
            "paths": summary}
    pngs = [plots.latency_cdf(list(paths.values()), out / "latency_cdf.png",
                              f"stream: unary vs streamed, tiny model, {args.callers} callers"),
            plots.bars({k: v["ok_per_s"] for k, v in body["summary"].items()}, out / "saturated_rps.png",
                       "stream: saturated req/s through the router", "req/s")]
    return harness.write_results(out, NAME, args, body, pngs)
