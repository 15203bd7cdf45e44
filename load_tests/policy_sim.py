"""zipf-cache (simulated): replay a seeded Zipf request trace through each eviction
policy's pure victim function and compare the misses with Belady's offline optimum.

    python -m load_tests.policy_sim [--models 1000] [--requests 200000] [--capacity 0.1]
                                    [--zipf 1.0] [--seed 7] [--rate 100] [--ttl-idle-s 60,2]

Each request asks for one of ``--models`` models, drawn from a Zipf law (rank r
with weight 1/r^s, the ranks shuffled by the seed), ``--rate`` requests a second
of simulated time. The cache holds ``--capacity`` x the models (uniform sizes,
where Belady's farthest-next-use rule is the exact optimum) and, in a second
scenario, ``--capacity`` x the total bytes of models with log-normal sizes and a
load cost that grows with size (Belady's rule is then a heuristic, not a bound;
GDSF optimises the load seconds, so they are reported too). The policies are
the ones the runtime runs (``mesh.policy.eviction``) driven through the same
frozen :class:`CacheView` the runtime builds; ``ttl`` also expires models idle
for ``--ttl-idle-s`` before each request (one row per value). Writes
``load_tests/results/policy_sim/results.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import heapq
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from load_tests.harness import save_json
from mesh.policy import eviction as ev

RESULTS = Path(__file__).resolve().parent / "results" / "policy_sim"


@dataclass(frozen=True)
class Trace:
    requests: np.ndarray  # model index per request
    sizes: np.ndarray  # bytes per model
    costs: np.ndarray  # load seconds per model
    capacity: int  # bytes


def zipf_trace(models: int, requests: int, s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, models + 1) ** s
    order = rng.permutation(models)  # which model has which popularity rank
    return order[rng.choice(models, size=requests, p=weights / weights.sum())]


def make_trace(args: argparse.Namespace, sized: bool) -> Trace:
    reqs = zipf_trace(args.models, args.requests, args.zipf, args.seed)
    if not sized:
        size = 64 * 2**20
        sizes = np.full(args.models, size, dtype=np.int64)
        return Trace(reqs, sizes, np.full(args.models, 1.0), int(size * max(1, round(args.capacity * args.models))))
    rng = np.random.default_rng(args.seed + 1)
    sizes = np.clip(rng.lognormal(np.log(200 * 2**20), 1.0, args.models), 2**20, 16 * 2**30).astype(np.int64)
    costs = 0.2 + sizes / 500e6  # a fixed cost plus 500 MB/s
    return Trace(reqs, sizes, costs, int(sizes.sum() * args.capacity))


@dataclass
class Result:
    misses: int = 0
    miss_seconds: float = 0.0
    evictions: int = 0

    def row(self, requests: int) -> dict[str, Any]:
        return {"misses": self.misses, "miss_ratio": round(self.misses / requests, 4),
                "miss_load_seconds": round(self.miss_seconds, 1), "evictions": self.evictions}


def simulate(trace: Trace, policy: ev.EvictionPolicy, rate: float) -> Result:
    """The runtime cache's bookkeeping around a pure victim function."""
    entries: dict[str, ev.EntryView] = {}
    used, aging, out = 0, 0.0, Result()
    for i, m in enumerate(trace.requests.tolist()):
        now = i / rate
        mid, size = str(m), int(trace.sizes[m])
        if policy.expired is not None:
            for gone in policy.expired(ev.CacheView(tuple(entries.values()), now, aging)):
                used -= entries.pop(gone).size
                out.evictions += 1
        hit = entries.get(mid)
        if hit is not None:
            entries[mid] = replace(hit, last_used=now, uses=hit.uses + 1, credit=aging)
            continue
        out.misses += 1
        out.miss_seconds += float(trace.costs[m])
        if size > trace.capacity:
            continue
        if used + size > trace.capacity:
            decision = policy.victims(ev.CacheView(tuple(entries.values()), now, aging), used + size - trace.capacity)
            assert decision is not None, "nothing is in flight: a victim list always exists"
            for gone in decision.victims:
                used -= entries.pop(gone).size
            out.evictions += len(decision.victims)
            aging = max(aging, decision.aging)
        entries[mid] = ev.EntryView(mid, size, now, 0, 1, now, float(trace.costs[m]), aging)
        used += size
    return out


def belady(trace: Trace) -> Result:
    """Farthest next use first (exact optimum for uniform sizes)."""
    reqs = trace.requests.tolist()
    nxt = [0] * len(reqs)
    last: dict[int, int] = {}
    for i in range(len(reqs) - 1, -1, -1):
        nxt[i] = last.get(reqs[i], len(reqs) + reqs[i])  # never again: farther than anything
        last[reqs[i]] = i
    cached: dict[int, int] = {}  # model -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, model), stale entries skipped
    used, out = 0, Result()
    for i, m in enumerate(reqs):
        if m in cached:
            cached[m] = nxt[i]
            heapq.heappush(heap, (-nxt[i], m))
            continue
        out.misses += 1
        out.miss_seconds += float(trace.costs[m])
        size = int(trace.sizes[m])
        if size > trace.capacity:
            continue
        while used + size > trace.capacity:
            neg, victim = heapq.heappop(heap)
            if cached.get(victim) != -neg:
                continue
            del cached[victim]
            used -= int(trace.sizes[victim])
            out.evictions += 1
        cached[m] = nxt[i]
        heapq.heappush(heap, (-nxt[i], m))
        used += size
    return out


def policies(ttl_idle_s: list[float]) -> dict[str, ev.EvictionPolicy]:
    out = {
        "lru": ev.EvictionPolicy("lru", ev.lru),
        "lfu": ev.EvictionPolicy("lfu", ev.Lfu()),
        "gdsf": ev.EvictionPolicy("gdsf", ev.Gdsf()),
    }
    for idle in ttl_idle_s:
        ttl = ev.Ttl(idle_s=idle)
        out[f"ttl (idle {idle:g} s)"] = ev.EvictionPolicy("ttl", ttl, expired=ttl.expired,
                                                          sweep_interval_s=ttl.sweep_interval_s)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--capacity", type=float, default=0.1, help="fraction of the models (or of their bytes) that fits")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent s")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=100.0, help="requests per simulated second")
    p.add_argument("--ttl-idle-s", default="60,2", help="idle TTLs to simulate, comma-separated seconds")
    args = p.parse_args()
    report: dict[str, Any] = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for scenario, sized in (("uniform sizes", False), ("log-normal sizes", True)):
        trace = make_trace(args, sized)
        rows = {name: simulate(trace, pol, args.rate).row(args.requests) for name, pol in policies([float(t) for t in args.ttl_idle_s.split(",")]).items()}
        rows["belady" if not sized else "belady (farthest next use; a heuristic with sizes)"] = \
            belady(trace).row(args.requests)
        report[scenario] = {"capacity_bytes": trace.capacity, "distinct_models_requested":
                            int(np.unique(trace.requests).size), "policies": rows}
        print(f"\n{scenario}: {args.requests} requests over {args.models} models (Zipf s={args.zipf}, seed {args.seed}), "
              f"capacity {args.capacity:.0%} of the {'models' if not sized else 'bytes'}")
        print(f"{'policy':<52} {'misses':>8} {'miss ratio':>10} {'load s on misses':>17}")
        for name, r in rows.items():
            print(f"{name:<52} {r['misses']:>8} {r['miss_ratio']:>10.4f} {r['miss_load_seconds']:>17.1f}")
    save_json(RESULTS, report)


if __name__ == "__main__":
    main()
