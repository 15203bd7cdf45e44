"""gateway-tuning: Envoy configurations side by side on one mesh, against straight to the runtime.

One local mesh (etcd, one runtime, a router, the gateway's Envoy programmed over xDS) with
the tiny model loaded. The live Envoy's configuration (bootstrap + the clusters and routes
the router served) is copied into static configurations, changed per variant, and each
variant runs as its own Envoy beside the others, so they differ in nothing else:

- ``after``: the configuration as served now (the gateway's defaults);
- ``before``: the previous defaults (the Lua filter called on every request, every stat,
  ``x-envoy-*`` and ``server`` headers added);
- ``floor``: the least Envoy can do for this request (no filter but the router, no stats,
  no retries, one route straight to the runtime): what any Envoy costs on this machine;
- ``c2``: ``after`` with two worker threads;
- ``ads``: the gateway's own Envoy (xDS-programmed; should measure like ``after``).

Per path and round: an open loop (Poisson at ``--rate``) for p50/p99 and CPU per request
at that rate, then a closed loop (``--callers``) for saturated req/s and CPU per request;
the paths take turns for ``--rounds`` rounds, pooled. The open loop runs once per pacer:
``spin`` (the generator's default: sleep, then busy-wait the last ~2 ms, CPU taken from the
cores the paths share) and ``timerfd`` (a Linux timerfd wakes the loop; no busy-wait).
Every request names the model in ``mm-model-id`` (``--body``: only in the body).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from load_tests import harness, plots
from load_tests.generator import TimerfdPacer, _sleep_until, closed_loop, grpc_sender, open_loop
from load_tests.probe import MeshProbe
from load_tests.recorder import Recorder
from load_tests.workload import make_models, register_all
from mesh.etcd_server import free_port
from router.xds.gateway import find_envoy

NAME = "gateway-tuning"
HELP = "Envoy configurations (before/after/floor/...) side by side vs direct, tiny model"
Config = dict[str, Any]


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=1, capacity="1Gi")
    p.add_argument("--variants", default="before,after,floor", help="Envoy variants (also: c2, ads)")
    p.add_argument("--rate", type=float, default=300.0, help="open-loop requests/s per path")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each phase in each round")
    p.add_argument("--rounds", type=int, default=4, help="turns each path takes (pooled)")
    p.add_argument("--callers", type=int, default=8, help="closed-loop concurrent callers (saturation)")
    p.add_argument("--warmup", type=int, default=100, help="requests per path and round before measuring")
    p.add_argument("--pacers", default="spin,timerfd",
                   help="how the open loop waits, each measured: spin (the generator's default), timerfd")
    p.add_argument("--body", action="store_true", help="name the model only in the body (Envoy paths)")


def _hcm(cfg: Config) -> Config:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def static_copy(dump: Config) -> Config:
    """The live Envoy's bootstrap with its xDS clusters and routes made static (gRPC listener only)."""
    by_type = {c["@type"].rpartition(".")[2]: c for c in dump["configs"]}
    cfg = copy.deepcopy(by_type["BootstrapConfigDump"]["bootstrap"])
    cfg.pop("dynamic_resources", None)
    clusters = [{k: v for k, v in d["cluster"].items() if k != "@type"}
                for d in by_type["ClustersConfigDump"].get("dynamic_active_clusters", [])]
    route = next(r["route_config"] for r in by_type["RoutesConfigDump"]["dynamic_route_configs"]
                 if r["route_config"]["name"] == "meshserve")
    st = cfg["static_resources"]
    st["listeners"] = st["listeners"][:1]
    st["clusters"] = [c for c in st["clusters"] if c["name"] == "router"] + clusters
    hcm = _hcm(cfg)
    hcm.pop("rds")
    hcm["route_config"] = {k: v for k, v in route.items() if k != "@type"}
    return cfg


def before(cfg: Config) -> None:
    """The defaults before the gateway-tuning change."""
    hcm = _hcm(cfg)
    for i, f in enumerate(hcm["http_filters"]):
        if f["name"] == "body_model_unless_header":
            hcm["http_filters"][i] = f["typed_config"]["extension_config"]
        if f["name"] == "envoy.filters.http.router":
            f["typed_config"].pop("suppress_envoy_headers", None)
    hcm.pop("server_header_transformation", None)
    cfg.pop("stats_config", None)


def floor(cfg: Config) -> None:
    hcm = _hcm(cfg)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router"]
    cfg["stats_config"] = {"stats_matcher": {"reject_all": True}}
    copies = next(c for c in cfg["static_resources"]["clusters"] if c["name"].startswith("copies_"))
    copies.pop("outlier_detection", None)
    copies["lb_policy"] = "ROUND_ROBIN"
    hcm["route_config"] = {"name": "floor", "virtual_hosts": [{"name": "floor", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": copies["name"], "timeout": "0s"}}]}]}


VARIANTS: dict[str, tuple[Callable[[Config], None] | None, int]] = {
    "after": (None, 1), "before": (before, 1), "floor": (floor, 1), "c2": (None, 2)}


def _admin(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read().decode()  # type: ignore[no-any-return]
    except OSError:
        return ""


def start_envoy(name: str, cfg: Config, concurrency: int, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    cfg = copy.deepcopy(cfg)
    admin, port = free_port(), free_port()
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    cfg["node"]["id"] = f"tuning-{name}"
    path = work / f"envoy-{name}.json"
    path.write_text(json.dumps(cfg))
    with open(work / f"envoy-{name}.log", "wb") as log:
        proc = subprocess.Popen([str(find_envoy()), "-c", str(path), "--log-level", "warning", "--disable-hot-restart",
                                 "--concurrency", str(concurrency)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while _admin(admin, "/ready").strip() != "LIVE":
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"Envoy variant {name} did not start: " + (work / f"envoy-{name}.log").read_text()[-3000:])
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


class Path_:
    """One path, measured over rounds: open loop, then closed loop, CPU per request of each process."""

    def __init__(self, name: str, send: Any) -> None:
        self.name, self.send = name, send
        self.lat: dict[str, Recorder] = {}
        self.sat = Recorder(f"{name} saturated")
        self.cpu: dict[str, dict[str, list[float]]] = {"saturated": {}}

    def _charge(self, phase: str, before: dict[str, tuple[float, float]], pids: dict[str, int]) -> None:
        for k, pid in pids.items():
            u, s = proc_cpu(pid)
            acc = self.cpu.setdefault(phase, {}).setdefault(k, [0.0, 0.0])
            acc[0] += u - before[k][0]
            acc[1] += s - before[k][1]

    async def round(self, model: str, payload: bytes, args: argparse.Namespace, i: int, pids: dict[str, int],
                    t0: float, pacers: dict[str, Any]) -> None:
        for _ in range(args.warmup):
            await self.send(model, payload)
        for pname, pacer in pacers.items():
            rec = self.lat.setdefault(pname, Recorder(f"{self.name} open loop ({pname})"))
            cpu = {k: proc_cpu(p) for k, p in pids.items()}
            await open_loop(self.send, [model], {model: payload}, args.rate, args.seconds, rec, seed=args.seed + i,
                            t0=t0, pacer=pacer)
            self._charge(f"open_loop_{pname}", cpu, pids)
        cpu = {k: proc_cpu(p) for k, p in pids.items()}
        await closed_loop(self.send, [model], {model: payload}, args.callers, args.seconds, self.sat, t0=t0)
        self._charge("saturated", cpu, pids)

    def summary(self) -> dict[str, Any]:
        def per_request(phase: str, n: int) -> dict[str, Any]:
            return {k: {"user_ms": round(u * 1e3 / max(n, 1), 4), "sys_ms": round(s * 1e3 / max(n, 1), 4)}
                    for k, (u, s) in self.cpu[phase].items()}

        return {**{f"open_loop_{p}": r.summary() for p, r in self.lat.items()}, "saturated": self.sat.summary(),
                **{f"cpu_per_request_open_loop_{p}": per_request(f"open_loop_{p}", r.ok) for p, r in self.lat.items()},
                "cpu_per_request_saturated": per_request("saturated", self.sat.ok)}


async def run(args: argparse.Namespace) -> Path:
    if args.target:
        raise SystemExit("gateway-tuning runs its own local mesh: drop --target")
    out = harness.out_dir(args, NAME)
    load_before = os.getloadavg()
    pacers: dict[str, Any] = {p: TimerfdPacer() if p == "timerfd" else _sleep_until for p in args.pacers.split(",")}
    procs: list[subprocess.Popen[bytes]] = []
    async with harness.open_mesh(args, gateway=True, gateway_concurrency=1) as mesh:
        local = mesh.local
        assert local is not None and local.gateway_proc is not None and local.gateway_proc.proc is not None
        gw, gw_pid = local.gateway_proc, local.gateway_proc.proc.pid
        models = make_models(mesh.work_dir / "models", 1, prefix="gt", seed=args.seed)
        tiny = models.ids[0]
        channels: dict[str, grpc.aio.Channel] = {}
        try:
            async with grpc.aio.insecure_channel(local.router_endpoint, options=harness.GRPC_OPTIONS) as rch:
                await register_all(rch, models)
                await grpc_sender(rch)(tiny, models.payloads[tiny])  # loads it
                status = await MeshProbe(rch).cluster()
            holder = next(i.endpoint for i in status.instances if tiny in i.model_ids)
            deadline = time.monotonic() + 30
            while tiny not in (dump := gw.admin("/config_dump")) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            base = static_copy(json.loads(dump))
            channels["direct"] = grpc.aio.insecure_channel(holder, options=harness.GRPC_OPTIONS)
            pids = {"client": os.getpid(), "runtime": local.procs[0].proc.pid}
            for name in [v for v in args.variants.split(",") if v]:
                if name == "ads":
                    channels[name], pids[name] = grpc.aio.insecure_channel(local.endpoint), gw_pid
                    continue
                change, concurrency = VARIANTS[name]
                cfg = copy.deepcopy(base)
                if change is not None:
                    change(cfg)
                proc, endpoint = await asyncio.get_running_loop().run_in_executor(
                    None, start_envoy, name, cfg, concurrency, mesh.work_dir)
                procs.append(proc)
                pids[name] = proc.pid
                channels[name] = grpc.aio.insecure_channel(endpoint, options=harness.GRPC_OPTIONS)
            paths = [Path_(n, grpc_sender(ch, header=n == "direct" or not args.body)) for n, ch in channels.items()]
            t0 = time.perf_counter()
            for i in range(args.rounds):
                for p in paths:
                    await p.round(tiny, models.payloads[tiny], args, i, pids, t0, pacers)
        finally:
            for ch in channels.values():
                await ch.close()
            for proc in procs:
                proc.terminate()
                proc.wait(15)
            for pacer in pacers.values():
                if isinstance(pacer, TimerfdPacer):
                    pacer.close()
    results = {p.name: p.summary() for p in paths}
    png = plots.bars({p.name: p.sat.summary()["ok_per_s"] for p in paths}, out / "saturated_rps.png",
                     "tiny model: saturated throughput by Envoy configuration", "req/s")
    body = {"summary": _summary(results), "results": results, "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()}
    return harness.write_results(out, NAME, args, body, [png])


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    d = results["direct"]
    pacers = [k.removeprefix("open_loop_") for k in d if k.startswith("open_loop_")]

    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else 0.0

    out: dict[str, Any] = {}
    for name, r in results.items():
        own = name if name != "direct" else "runtime"
        sat = r["saturated"]["ok_per_s"]
        row: dict[str, Any] = {"saturated_rps": sat, "rps_over_direct": ratio(sat, d["saturated"]["ok_per_s"]),
                               "errors": r["saturated"]["errors"] + sum(r[f"open_loop_{p}"]["errors"] for p in pacers)}
        for p in pacers:
            lat, dlat = r[f"open_loop_{p}"], d[f"open_loop_{p}"]
            row[f"p50_ms_{p}"] = lat["latency_ms"]["p50"]
            row[f"p50_over_direct_{p}"] = ratio(lat["latency_ms"]["p50"], dlat["latency_ms"]["p50"])
            # From the actual send (without the pacer's lag), beside p50 from the intended send.
            row[f"service_p50_ms_{p}"] = lat["service_ms"]["p50"]
            row[f"service_p50_over_direct_{p}"] = ratio(lat["service_ms"]["p50"], dlat["service_ms"]["p50"])
            row[f"p99_ms_{p}"] = lat["latency_ms"]["p99"]
        row["cpu_ms_per_request"] = {
            phase.removeprefix("cpu_per_request_"): {k: round(v["user_ms"] + v["sys_ms"], 3) for k, v in r[phase].items()
                                                     if k in (own, "client", "runtime")}
            for phase in r if phase.startswith("cpu_per_request_")}
        out[name] = row
    return out
