"""gateway: Envoy in front of the router, in one run: straight to the runtimes, through Envoy
with the ``mm-model-id`` header, through Envoy with the model named only in the body
(tritonclient's default), and through the router alone; ratios over direct.

Two workloads on one local mesh (etcd, ``--runtimes`` runtimes, a router process, Envoy
programmed by it over xDS): the tiny model alone, then ``--models`` tiny models, all
loaded, drawn with Zipf(``--zipf``) popularity. "direct" sends each request to the
runtime holding its model (the client knows the placement). Per path and round: an
open-loop phase (Poisson at ``--rate``, paced by ``--pacer``) for p50/p99, a closed-loop phase (``--callers``)
for saturated req/s and CPU per request of each process. Paths take turns for
``--rounds`` rounds, pooled. Client, Envoy, router and runtimes share this machine's
cores: the ratios in one run are the point, and the load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from load_tests import harness, plots
from load_tests.generator import Send, TimerfdPacer, _sleep_until, grpc_sender
from load_tests.probe import MeshProbe
from load_tests.scenarios.overhead import Way
from load_tests.workload import Zipf, make_models, register_all
from mesh.etcd_server import free_port
from router.xds.process import GatewayProcess

NAME = "gateway"
HELP = "direct vs Envoy (header, body only) vs router alone: the tiny model and N models under Zipf"
PATHS = ("direct", "envoy-header", "envoy-body", "router")
#: With --no-lua-too: a second Envoy without the body filter (its header cost; body-only
#: requests then go Envoy -> router), the alternative to reading the body in Envoy.
NO_LUA = ("nolua-header", "nolua-body")


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=2, capacity="1Gi")
    p.add_argument("--models", type=int, default=200, help="models in the Zipf workload (all loaded)")
    p.add_argument("--zipf", type=float, default=1.0, help="popularity exponent s")
    p.add_argument("--rate", type=float, default=300.0, help="open-loop requests/s per path")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each phase in each round")
    p.add_argument("--rounds", type=int, default=2, help="turns each path takes (pooled)")
    p.add_argument("--callers", type=int, default=8, help="closed-loop concurrent callers (saturation)")
    p.add_argument("--warmup", type=int, default=200, help="requests per path and round before measuring")
    p.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy worker threads")
    p.add_argument("--workloads", default="tiny,zipf", help="which workloads to run")
    p.add_argument("--pacer", choices=("timerfd", "spin"), default="timerfd",
                   help="how the open loop waits for each arrival: a timerfd, or sleep + busy-wait (which takes "
                        "a core from the paths under test; gateway-tuning measures both)")
    p.add_argument("--no-lua-too", action="store_true",
                   help="also measure a second Envoy without the body filter (header, and body-only via the router)")


class Placement:
    """Where each model's copies are, refreshed before every round: the router may add a copy of
    a hot model mid-run, and Envoy spreads over every copy, so "direct" must too (round robin)."""

    def __init__(self, router: grpc.aio.Channel) -> None:
        self.probe = MeshProbe(router)
        self.holders: dict[str, list[str]] = {}
        self.channels: dict[str, grpc.aio.Channel] = {}
        self._sends: dict[str, Send] = {}
        self._turn = 0

    async def refresh(self) -> None:
        status = await self.probe.cluster()
        holders: dict[str, list[str]] = {}
        for i in status.instances:
            for m in i.model_ids:
                holders.setdefault(m, []).append(i.endpoint)
        for endpoint in {e for es in holders.values() for e in es} - set(self.channels):
            self.channels[endpoint] = grpc.aio.insecure_channel(endpoint, options=harness.GRPC_OPTIONS)
            self._sends[endpoint] = grpc_sender(self.channels[endpoint], header=True)
        self.holders = {m: sorted(es) for m, es in holders.items()}

    async def send(self, model: str, payload: bytes) -> Any:
        holders = self.holders[model]
        self._turn += 1
        return await self._sends[holders[self._turn % len(holders)]](model, payload)

    def copies(self) -> dict[str, int]:
        return {m: len(es) for m, es in self.holders.items()}


def _ratios(summary: dict[str, Any]) -> dict[str, Any]:
    d = summary["direct"]

    def r(a: float, b: float) -> float:
        return round(a / b, 3) if b else 0.0

    out: dict[str, Any] = {}
    for name in [p for p in (*PATHS, *NO_LUA) if p in summary and p != "direct"]:
        s = summary[name]
        out[f"saturated_rps_{name}_over_direct"] = r(s["saturated"]["ok_per_s"], d["saturated"]["ok_per_s"])
        out[f"p50_{name}_over_direct"] = r(s["open_loop"]["latency_ms"]["p50"], d["open_loop"]["latency_ms"]["p50"])
        out[f"p99_{name}_over_direct"] = r(s["open_loop"]["latency_ms"]["p99"], d["open_loop"]["latency_ms"]["p99"])
    # The targets, judged on unrounded figures.
    sat = {k: summary[k]["saturated"]["ok_per_s"] for k in PATHS}
    p50 = {k: summary[k]["open_loop"]["latency_ms"]["p50"] for k in PATHS}
    out["target_header_rps_ge_0.85x_direct"] = sat["envoy-header"] >= 0.85 * sat["direct"]
    out["target_header_p50_le_1.3x_direct"] = p50["envoy-header"] <= 1.3 * p50["direct"]
    out["target_body_rps_ge_0.7x_direct"] = sat["envoy-body"] >= 0.7 * sat["direct"]
    out["body_not_slower_than_router"] = sat["envoy-body"] >= sat["router"]
    return out


async def _workload(name: str, seq: Sequence[str], payloads: dict[str, bytes], sends: dict[str, Send],
                    pids: dict[str, int], args: argparse.Namespace, t0: float,
                    placement: Placement, pacer: Any) -> tuple[dict[str, Any], list[Way]]:
    names = [p for p in (*PATHS, *NO_LUA) if p in sends]
    ways = [Way(f"{name} {p}", sends[p], pacer) for p in names]
    copies = []
    for i in range(args.rounds):
        for way in ways:
            await placement.refresh()
            copies.append(max(placement.copies().get(m, 0) for m in set(seq)))
            await way.round(seq, payloads, args, i, pids, t0)
    out: dict[str, Any] = {p: w.summary() for p, w in zip(names, ways)}
    out["most_copies_of_a_model_per_turn"] = copies
    return out, ways


async def run(args: argparse.Namespace) -> Path:
    if args.target:
        raise SystemExit("gateway runs its own local mesh (Envoy, router, runtimes): drop --target")
    out = harness.out_dir(args, NAME)
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    pngs = []
    async with harness.open_mesh(args, gateway=True, gateway_concurrency=args.envoy_concurrency) as mesh:
        local = mesh.local
        assert local is not None and local.gateway_proc is not None and local.router_proc is not None
        models = make_models(mesh.work_dir / "models", args.models, prefix="gw", seed=args.seed)
        async with grpc.aio.insecure_channel(local.router_endpoint, options=harness.GRPC_OPTIONS) as rch, \
                grpc.aio.insecure_channel(local.endpoint, options=harness.GRPC_OPTIONS) as ech:
            codes = await register_all(rch, models)
            warm = grpc_sender(rch)
            for m in models.ids:
                await warm(m, models.payloads[m])  # every model loaded before anything is measured
            placement = Placement(rch)
            await placement.refresh()
            channels = placement.channels
            sends = {"direct": placement.send, "envoy-header": grpc_sender(ech, header=True),
                     "envoy-body": grpc_sender(ech), "router": grpc_sender(rch)}
            pids = {"client": os.getpid(), "envoy": local.gateway_proc.proc.pid if local.gateway_proc.proc else 0,
                    "router": local.router_proc.proc.pid}
            nolua = None
            if args.no_lua_too:
                nolua = GatewayProcess(listen=f"127.0.0.1:{free_port()}", router=local.router_endpoint,
                                       admin_port=free_port(), log_path=mesh.work_dir / "gateway-nolua.log",
                                       concurrency=args.envoy_concurrency, body_routing=False)
                await asyncio.get_running_loop().run_in_executor(None, nolua.start)
                nch = grpc.aio.insecure_channel(nolua.listen, options=harness.GRPC_OPTIONS)
                channels["nolua"] = nch
                sends |= {"nolua-header": grpc_sender(nch, header=True), "nolua-body": grpc_sender(nch)}
                pids["envoy_nolua"] = nolua.proc.pid if nolua.proc else 0
            pids |= {f"runtime_{p.instance_id}": p.proc.pid for p in local.procs}
            t0 = time.perf_counter()
            pacer = TimerfdPacer() if args.pacer == "timerfd" else _sleep_until
            try:
                if "tiny" in args.workloads:
                    tiny = models.ids[0]
                    results["tiny"], ways = await _workload("tiny", [tiny], models.payloads, sends, pids, args, t0,
                                                        placement, pacer)
                    pngs.append(plots.bars({w.sat.name: w.sat.summary()["ok_per_s"] for w in ways},
                                           out / "tiny_saturated_rps.png", "tiny model: saturated throughput", "req/s"))
                if "zipf" in args.workloads:
                    seq = [models.ids[i] for i in Zipf(len(models.ids), args.zipf, args.seed).draw(50_000)]
                    results["zipf"], ways = await _workload("zipf", seq, models.payloads, sends, pids, args, t0,
                                                            placement, pacer)
                    pngs.append(plots.bars({w.sat.name: w.sat.summary()["ok_per_s"] for w in ways},
                                           out / "zipf_saturated_rps.png",
                                           f"{args.models} models, Zipf {args.zipf:g}: saturated throughput", "req/s"))
                    pngs.append(plots.latency_cdf([w.lat for w in ways], out / "zipf_latency_cdf.png",
                                                  f"{args.models} models: open loop {args.rate:g} req/s"))
            finally:
                for ch in channels.values():
                    await ch.close()
                if nolua is not None:
                    nolua.terminate()
                if isinstance(pacer, TimerfdPacer):
                    pacer.close()
            # Where Envoy sent what it received: copies_* (straight) and router (fallbacks).
            envoy_stats = {k: v for k, v in local.gateway_proc.stats("cluster.").items()
                           if k.endswith(".upstream_rq_total")}
    summary = {w: {"ratios": _ratios(r), **r} for w, r in results.items()}
    body = {"summary": summary, "registration": codes, "envoy_upstream_requests": envoy_stats,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    return harness.write_results(out, NAME, args, body, pngs)
