"""churn: registrations and unregistrations while traffic flows.

Two phases of the same open-loop Zipf traffic over a stable set of models: first alone
(baseline), then with churners cycling new models through register -> first inference ->
unregister -> one more inference (which must be NOT_FOUND), paced at ``--churn-rate`` cycles/s
in all (a set load, not as fast as the machine allows, so runs compare). Reported: the stable
traffic's latency and errors by code in each phase, and every churn operation's codes.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from pathlib import Path

import grpc

from load_tests import harness, plots
from load_tests.generator import Send, code_of, grpc_sender, open_loop
from load_tests.probe import MeshProbe, delta
from load_tests.recorder import Recorder
from load_tests.workload import ModelSet, Zipf, make_models, register_all
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc

NAME = "churn"
HELP = "registrations and unregistrations during traffic: errors by code, latency impact"


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=2, capacity="1Gi")
    p.add_argument("--models", type=int, default=30, help="stable models under traffic")
    p.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s on the stable models")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    p.add_argument("--churners", type=int, default=4, help="concurrent register/infer/unregister cycles")
    p.add_argument("--churn-rate", type=float, default=10.0, help="cycles started per second, all churners together")
    p.add_argument("--zipf", type=float, default=1.0)


async def _churner(stub: mm_grpc.ModelMeshStub, send: Send, pool: ModelSet, ids: list[str],
                   recs: dict[str, Recorder], stop_at: float, t0: float, interval_s: float, offset_s: float) -> int:
    """Starts a cycle every ``interval_s`` (or when the last one ends, if later) with models from
    ``ids`` (shared, consumed) until the deadline; returns cycles done."""
    cycles = 0
    next_at = time.perf_counter() + offset_s

    async def op(kind: str, call: object) -> str:
        t = time.perf_counter()
        try:
            await call  # type: ignore[misc]
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = code_of(e)
        recs[kind].done(t - t0, time.perf_counter() - t0, code)
        return code

    while ids and next_at < stop_at:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        next_at += interval_s
        m = ids.pop()
        info = mm.ModelInfo(type="onnx", path=f"file://{pool.paths[m]}")
        if await op("register", stub.registerModel(mm.RegisterModelRequest(modelId=m, modelInfo=info), timeout=60)) != "OK":
            continue
        await op("first_inference", send(m, pool.payloads[m]))
        await op("unregister", stub.unregisterModel(mm.UnregisterModelRequest(modelId=m), timeout=60))
        await op("after_unregister", send(m, pool.payloads[m]))  # NOT_FOUND expected
        cycles += 1
    return cycles


async def run(args: argparse.Namespace) -> Path:
    out = harness.out_dir(args, NAME)
    async with harness.open_mesh(args) as mesh:
        stable = make_models(mesh.work_dir / "models", args.models, prefix=f"{mesh.tag}stable", seed=args.seed)
        pool = make_models(mesh.work_dir / "models", math.ceil(args.churn_rate * args.seconds) + args.churners,
                           prefix=f"{mesh.tag}churn", seed=args.seed + 1)
        draws = Zipf(args.models, args.zipf, args.seed).draw(int(args.rate * args.seconds * 1.3) + 10)
        seq = [stable.ids[int(i)] for i in draws]
        async with mesh.channel() as ch:
            reg = await register_all(ch, stable)
            send = grpc_sender(ch)
            for m in stable.ids:  # load them all first: the phases compare steady states
                await send(m, stable.payloads[m])
            probe = MeshProbe(ch, mesh.router_metrics)
            base = Recorder("stable traffic, no churn")
            stop = asyncio.Event()
            sampler = asyncio.create_task(probe.sample_every(2.0, time.time(), stop))
            s0 = await probe.snapshot()
            lag_base = await open_loop(send, seq, stable.payloads, args.rate, args.seconds, base, seed=args.seed)
            s1 = await probe.snapshot()
            churned = Recorder("stable traffic, with churn")
            ops = {k: Recorder(k) for k in ("register", "first_inference", "unregister", "after_unregister")}
            stub = mm_grpc.ModelMeshStub(ch)
            ids = list(reversed(pool.ids))
            t0 = time.perf_counter()
            interval = args.churners / args.churn_rate
            async with asyncio.TaskGroup() as tg:
                churners = [tg.create_task(_churner(stub, send, pool, ids, ops, t0 + args.seconds, t0, interval,
                                                    i * interval / args.churners)) for i in range(args.churners)]
                lag_churn = await open_loop(send, seq, stable.payloads, args.rate, args.seconds, churned,
                                            seed=args.seed, t0=t0)
            s2 = await probe.snapshot()
            stop.set()
            await sampler
    cycles = sum(c.result() for c in churners)
    b, c = base.summary(), churned.summary()
    summary = {
        "stable_models": args.models, "registration": reg,
        "baseline": b | {"generator_lag": lag_base, "mesh": delta(s0, s1)},
        "with_churn": c | {"generator_lag": lag_churn, "mesh": delta(s1, s2)},
        "latency_impact": {p: round(c["latency_ms"][p] / b["latency_ms"][p], 2) if b["latency_ms"][p] else 0.0
                           for p in ("p50", "p99", "p99.9")},
        "churn_cycles": cycles, "churn_cycles_per_s": round(cycles / args.seconds, 1),
        "churn_ops": {k: {"codes": dict(r.codes), "latency_ms": r.summary()["latency_ms"]} for k, r in ops.items()},
    }
    pngs = [plots.latency_cdf([base, churned, ops["first_inference"]], out / "latency_cdf.png", "churn: latency"),
            plots.throughput([base, churned], out / "throughput.png", "churn: stable traffic over time"),
            plots.hit_ratio({"all traffic (churned models' first requests are misses)": probe.samples},
                            out / "hit_ratio.png", "churn: router hit ratio over time (churn starts halfway)")]
    return harness.write_results(out, NAME, args, {"summary": summary}, pngs)
