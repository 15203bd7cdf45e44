"""Reads the mesh's own counters: router and runtime Prometheus endpoints, MeshAdmin status.

Runtimes' metrics endpoints come from their instance records (GetClusterStatus), so a
probe works against any mesh, local or not, whose metrics are reachable.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc

#: name{labels} -> summed value, from one scrape (histogram buckets dropped).
Scrape = dict[str, float]


def scrape(endpoint: str, timeout_s: float = 5.0) -> Scrape:
    if not endpoint:
        return {}
    try:
        text = urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=timeout_s).read().decode()
    except OSError:
        return {}
    out: Scrape = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_bucket") or s.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            key = f"{s.name}{{{labels}}}" if labels else s.name
            out[key] = out.get(key, 0.0) + s.value
    return out


def total(sc: Scrape, name: str, **labels: str) -> float:
    """Sum of a metric over series whose labels include ``labels``."""
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for k, v in sc.items()
               if (k == name or k.startswith(name + "{")) and all(w in k for w in want))


@dataclass
class MeshProbe:
    channel: grpc.aio.Channel
    router_metrics: str = ""
    samples: list[dict[str, Any]] = field(default_factory=list)

    async def cluster(self) -> adm.ClusterStatus:
        return await adm_grpc.MeshAdminStub(self.channel).GetClusterStatus(adm.GetClusterStatusRequest(), timeout=10)

    async def snapshot(self) -> dict[str, Any]:
        """Router + summed runtime counters now, and per-instance model counts."""
        status = await self.cluster()
        loop = asyncio.get_running_loop()
        runtime_scrapes = await asyncio.gather(*(loop.run_in_executor(None, scrape, i.metrics_endpoint)
                                                 for i in status.instances))
        router = await loop.run_in_executor(None, scrape, self.router_metrics)
        rt: Scrape = {}
        for sc in runtime_scrapes:
            for k, v in sc.items():
                rt[k] = rt.get(k, 0.0) + v
        return {
            "wall": time.time(),
            "hits": total(router, "meshserve_cache_hits_total"),
            "misses": total(router, "meshserve_cache_misses_total"),
            "router_loads": total(router, "meshserve_router_loads_total"),
            "loads": total(rt, "meshserve_model_loads_total", result="success"),
            "load_failures": total(rt, "meshserve_model_loads_total", result="failure"),
            "evictions": total(rt, "meshserve_evictions_total"),
            "models_loaded": total(rt, "meshserve_models_loaded"),
            "instances": {i.instance_id: {"model_count": i.model_count, "used_bytes": i.used_bytes,
                                          "capacity_bytes": i.capacity_bytes} for i in status.instances},
            "registered_models": status.registered_models,
        }

    async def sample_every(self, interval_s: float, t0_wall: float, stop: asyncio.Event) -> None:
        """Appends a snapshot every ``interval_s`` until ``stop`` (owned by the scenario's TaskGroup)."""
        while not stop.is_set():
            try:
                snap = await self.snapshot()
                snap["t"] = round(snap["wall"] - t0_wall, 2)
                self.samples.append(snap)
            except grpc.aio.AioRpcError:
                pass  # a missed sample is a gap in the plot, not a failed run
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                pass


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    keys = ("hits", "misses", "router_loads", "loads", "load_failures", "evictions")
    d = {k: after[k] - before[k] for k in keys}
    looked = d["hits"] + d["misses"]
    d["hit_ratio"] = round(d["hits"] / looked, 4) if looked else 0.0
    return d
