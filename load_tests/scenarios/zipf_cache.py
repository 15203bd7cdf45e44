"""zipf-cache: Zipf(s) popularity over N models with room for a fraction of them; each
eviction policy on the same seeded request trace, beside Belady's offline optimum.

Each policy gets a fresh local mesh whose runtimes run with ``MESHSERVE_EVICTION_POLICY=<name>``.
A policy the runtime does not advertise (``meshserve runtime --help``) is reported as
skipped, never silently run as LRU. Misses are the runtimes' successful loads (first
references included); Belady's bound uses the number of models the mesh actually held
at once (its slots), on the trace this run recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from load_tests import harness, plots
from load_tests.belady import belady_misses, lru_misses
from load_tests.generator import grpc_sender, open_loop
from load_tests.probe import MeshProbe, delta
from load_tests.recorder import Recorder
from load_tests.workload import Zipf, make_models, register_all

NAME = "zipf-cache"
HELP = "Zipf popularity, capacity a fraction of the models: eviction policies vs Belady's optimum"
ENV = "MESHSERVE_EVICTION_POLICY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=2)
    p.add_argument("--models", type=int, default=60)
    p.add_argument("--fraction", type=float, default=0.25, help="capacity as a fraction of the models")
    p.add_argument("--size-bytes", type=int, default=1_000_000, help="model weights (0 = the 70 KB tiny MLP)")
    p.add_argument("--zipf", type=float, default=1.0, help="popularity exponent s")
    p.add_argument("--rate", type=float, default=40.0, help="open-loop requests/s")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--policies", default="lru,lfu,gdsf,ttl,adaptive")
    p.add_argument("--sample-s", type=float, default=2.0, help="mesh probe interval")


def advertised_policies(names: list[str]) -> dict[str, str]:
    """name -> "" (runs) or why it is skipped, from what ``meshserve runtime --help`` says."""
    text = subprocess.run([sys.executable, "-m", "mesh.cli", "runtime", "--help"], capture_output=True,
                          text=True, timeout=60).stdout
    honoured = ENV in text or "--eviction-policy" in text
    out = {}
    for name in names:
        if honoured:
            out[name] = "" if name in text.lower() else f"runtime --help does not list {name!r}"
        elif name == "lru":
            out[name] = ""  # the runtime's only policy today; runs as its default
        else:
            out[name] = f"the runtime does not honour {ENV} (not in `meshserve runtime --help`)"
    return out | {"_honoured": "yes" if honoured else "no"}


def capacity_for(slots_per_runtime: int, file_bytes: int) -> int:
    # The runtime charges a prediction of 1.5 x file + 64 KiB per model (see BENCHMARKS.md, Runtime);
    # half a model of slack so rounding never costs a slot.
    charge = int(1.5 * file_bytes) + 64 * 1024
    return slots_per_runtime * charge + charge // 2


async def _one_policy(args: argparse.Namespace, policy: str, draws: list[int], capacity: int,
                      t0_wall: float, nominal_slots: int = 0) -> dict[str, Any]:
    env = {ENV: policy}
    async with harness.open_mesh(args, capacity=str(capacity), runtime_env=env) as mesh:
        models = make_models(mesh.work_dir / "models", args.models, size_bytes=args.size_bytes, prefix=f"{mesh.tag}zipf",
                             seed=args.seed)
        seq = [models.ids[i] for i in draws]
        async with mesh.channel() as ch:
            reg = await register_all(ch, models)
            probe = MeshProbe(ch, mesh.router_metrics)
            before = await probe.snapshot()
            rec = Recorder(policy, keep_trace=True)
            stop = asyncio.Event()
            t_start = time.time()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(probe.sample_every(args.sample_s, t_start, stop))
                lag = await open_loop(grpc_sender(ch), seq, models.payloads, args.rate, args.seconds, rec,
                                      seed=args.seed)
                await asyncio.sleep(1.2)  # instance records refresh once a second
                stop.set()
            after = await probe.snapshot()
    trace = [m for _, m in sorted(rec.trace)]
    held = max((sum(i["model_count"] for i in s["instances"].values()) for s in probe.samples), default=0)
    slots = held or 1
    # Belady's bound uses the room the mesh was given: the sampled peak can miss a moment
    # when every slot was full (samples are seconds apart), and a bound with fewer slots
    # than the policy had is no lower bound.
    bound_slots = max(slots, nominal_slots)
    d = delta(before, after)
    return {"policy": policy, "recorder": rec, "samples": probe.samples, "registration": reg,
            "result": {"traffic": rec.summary(), "generator_lag": lag, "mesh": d,
                       "misses": int(d["loads"]), "slots_held": slots,
                       "belady_misses": belady_misses(trace, bound_slots),
                       "single_lru_misses": lru_misses(trace, slots),
                       "distinct_models_requested": len(set(trace)), "trace_requests": len(trace)}}


async def run(args: argparse.Namespace) -> Path:
    out = harness.out_dir(args, NAME)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    support = advertised_policies(names)
    if args.target:  # a running mesh evicts as it was configured: one run, no policy switching
        names, support = ["target"], {"target": "", "_honoured": "n/a (--target: the target's own policy)"}
    slots_total = max(1, round(args.fraction * args.models))
    per_runtime = math.ceil(slots_total / max(args.runtimes, 1))
    with tempfile.TemporaryDirectory() as tmp:
        file_bytes = make_models(Path(tmp), 1, size_bytes=args.size_bytes, seed=args.seed).file_bytes
    capacity = capacity_for(per_runtime, file_bytes)
    zipf = Zipf(args.models, args.zipf, args.seed)
    draws = [int(i) for i in zipf.draw(int(args.rate * args.seconds * 1.3) + 10)]  # same trace for every policy
    policies: dict[str, Any] = {}
    recs, series = [], {}
    for name in names:
        if support[name]:
            policies[name] = {"skipped": support[name]}
            continue
        r = await _one_policy(args, name, draws, capacity, time.time(),
                              0 if args.target else per_runtime * args.runtimes)
        policies[name] = r["result"] | {"registration": r["registration"]}
        recs.append(r["recorder"])
        series[name] = r["samples"]
    ran = {k: v for k, v in policies.items() if "skipped" not in v}
    pngs = []
    if recs:
        pngs += [plots.latency_cdf(recs, out / "latency_cdf.png", f"zipf-cache: s={args.zipf}, {args.rate:g} req/s"),
                 plots.throughput(recs, out / "throughput.png", "zipf-cache: throughput"),
                 plots.hit_ratio(series, out / "hit_ratio.png", "zipf-cache: router hit ratio over time"),
                 plots.bars({**{f"{k} misses": v["misses"] for k, v in ran.items()},
                             "Belady (bound)": min(v["belady_misses"] for v in ran.values())},
                            out / "misses.png", "misses (loads) vs Belady's optimum", "misses")]
    summary = {
        "models": args.models, "fraction": args.fraction, "model_file_bytes": file_bytes,
        # a --target mesh has its own capacity (slots_held is what it held, its other models included)
        "nominal_slots": None if args.target else per_runtime * args.runtimes,
        "capacity_per_runtime_bytes": None if args.target else capacity,
        "policy_variable_honoured": support["_honoured"],
        "misses_side_by_side": {k: ({"misses": v["misses"], "belady_misses": v["belady_misses"],
                                     "slots_held": v["slots_held"], "hit_ratio": v["mesh"]["hit_ratio"],
                                     "evictions": v["mesh"]["evictions"],
                                     "p50_ms": v["traffic"]["latency_ms"]["p50"],
                                     "p99_ms": v["traffic"]["latency_ms"]["p99"]}
                                    if "skipped" not in v else {"skipped": v["skipped"]})
                                for k, v in policies.items()},
    }
    return harness.write_results(out, NAME, args, {"summary": summary, "policies": policies}, pngs)
