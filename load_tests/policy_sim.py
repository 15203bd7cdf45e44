"""zipf-cache (simulated): replay seeded request traces through each eviction policy's
pure victim function, beside libCacheSim's reference policies, Belady's offline
optimum and (for independent traces) the static optimum.

    python -m load_tests.policy_sim [--models 1000] [--requests 50000] [--seed 7] [--rate 100]
                                    [--families classic,zipf,drift,scan,sized,mesh,decision,long] [--quick]

Trace families (``load_tests/traces.py``), each over ``--models`` models:

- ``classic``: the original table: Zipf ``--zipf``, room ``--capacity``, uniform
  and log-normal sizes, every built-in policy (``ttl`` at ``--ttl-idle-s``).
- ``zipf``: stationary Zipf, s in ``--zipf-grid`` x room in ``--room-grid``, with the
  static optimum and the exact-count LFU (:func:`exact_lfu`: what learning the
  popularities online costs a frequency policy that counts every request exactly).
- ``drift``: the hot set slides by one model every ``--drift-steps`` requests.
- ``scan``: bursts of ``--scan-length`` never-seen models every ``--scan-every``
  requests, against the same Zipf trace without them.
- ``sized``: log-normal sizes with load costs; misses, load seconds and bytes loaded.
- ``long`` (not in the defaults): stationary Zipf at room 20 % over
  ``--long-requests`` (200,000), ``adaptive`` beside libCacheSim's W-TinyLFU, the
  exact-count LFU and the static optimum: how much of the gap is learning.
- ``decision``: each policy's time per eviction decision with 10,000 models loaded.
- ``mesh``: ``--runtimes`` caches sharing the capacity (placement: room first,
  then the runtime with the oldest LRU entry, one copy per model) against one
  cache of the same total size.

Our policies run through the same frozen :class:`CacheView` (and, for
``adaptive``, the same owned state) the runtime's cache builds. Writes
``load_tests/results/policy_sim/results.json`` and prints one table per trace.
The defaults take about 3 minutes on 2 shared cores; ``--quick`` a quarter.
"""

from __future__ import annotations

import argparse
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from load_tests import lcs_ref
from load_tests import traces as tr
from load_tests.harness import save_json
from load_tests.traces import Trace, zipf_trace
from mesh.policy import eviction as ev
from mesh.policy.document import eviction_policy, eviction_setting

__all__ = ["Trace", "belady", "make_trace", "policies", "simulate", "zipf_trace"]

RESULTS = Path(__file__).resolve().parent / "results" / "policy_sim"


def make_trace(args: argparse.Namespace, sized: bool) -> Trace:
    reqs = zipf_trace(args.models, args.requests, args.zipf, args.seed)
    return tr.build(reqs, args.models, args.capacity, sized=sized, seed=args.seed, independent=True)


@dataclass
class Result:
    misses: int = 0
    miss_seconds: float = 0.0
    miss_bytes: int = 0
    evictions: int = 0
    decide_s: float = 0.0
    decisions: int = 0
    #: Misses in the trace's second half (after the warm-up).
    late: int = 0
    #: Loads that were no request's miss (a second copy).
    extra_loads: int = 0

    def row(self, requests: int) -> dict[str, Any]:
        out = {"misses": self.misses, "miss_ratio": round(self.misses / requests, 4),
               "miss_load_seconds": round(self.miss_seconds, 1), "miss_gib": round(self.miss_bytes / 2**30, 1),
               "evictions": self.evictions, "misses_second_half": self.late}
        if self.decisions:
            out["decision_us"] = round(1e6 * self.decide_s / self.decisions, 1)
        return out


class SimCache:
    """One runtime's cache bookkeeping around a pure victim function (as mesh/runtime/cache.py)."""

    def __init__(self, policy: ev.EvictionPolicy, capacity: int, out: Result) -> None:
        self.policy, self.capacity, self.out = policy, capacity, out
        self.entries: dict[str, ev.EntryView] = {}
        self.used, self.aging = 0, 0.0
        self.state = policy.new_state() if policy.new_state else None

    def expire(self, now: float) -> None:
        if self.policy.expired is None:
            return
        for gone in self.policy.expired(ev.CacheView(tuple(self.entries.values()), now, self.aging)):
            self.used -= self.entries.pop(gone).size
            self.out.evictions += 1

    def hit(self, mid: str, now: float) -> bool:
        e = self.entries.get(mid)
        if e is None:
            return False
        if self.state is not None:
            self.state.record(mid, len(self.entries), e.size, self.capacity, e.load_seconds, now)
        self.entries[mid] = replace(e, last_used=now, uses=e.uses + 1, credit=self.aging)
        return True

    def load(self, mid: str, size: int, cost: float, now: float) -> None:
        """A miss: make room, load, and count the waiting request."""
        if self.state is not None:
            self.state.missed(mid)
        if size > self.capacity:
            return
        if self.used + size > self.capacity:
            view = ev.CacheView(tuple(self.entries.values()), now, self.aging, capacity=self.capacity,
                                incoming_size=size, state=self.state)
            t0 = time.perf_counter()
            decision = self.policy.victims(view, self.used + size - self.capacity)
            self.out.decide_s += time.perf_counter() - t0
            self.out.decisions += 1
            assert decision is not None, "nothing is in flight: a victim list always exists"
            for gone in decision.victims:
                self.used -= self.entries.pop(gone).size
            self.out.evictions += len(decision.victims)
            self.aging = max(self.aging, decision.aging)
        self.entries[mid] = ev.EntryView(mid, size, now, 0, 1, now, cost, self.aging)
        self.used += size
        if self.state is not None:
            self.state.record(mid, len(self.entries), size, self.capacity, cost, now)

    def oldest(self) -> float:
        return min((e.last_used for e in self.entries.values()), default=-1.0)


def _miss(out: Result, trace: Trace, m: int, i: int) -> tuple[int, float]:
    size, cost = int(trace.sizes[m]), float(trace.costs[m])
    out.misses += 1
    out.late += i >= len(trace.requests) // 2
    out.miss_seconds += cost
    out.miss_bytes += size
    return size, cost


def simulate(trace: Trace, policy: ev.EvictionPolicy, rate: float) -> Result:
    """One cache of the trace's capacity."""
    out = Result()
    cache = SimCache(policy, trace.capacity, out)
    for i, m in enumerate(trace.requests.tolist()):
        now, mid = i / rate, str(m)
        cache.expire(now)
        if not cache.hit(mid, now):
            cache.load(mid, *_miss(out, trace, m, i), now)
    return out


def simulate_mesh(trace: Trace, policy: ev.EvictionPolicy, rate: float, runtimes: int,
                  replicate: frozenset[int] = frozenset()) -> Result:
    """``runtimes`` caches splitting the capacity; a miss goes to the runtime with the
    most free bytes if it fits, else to the one whose least recent model is oldest
    (the router's ranking: a cluster-wide LRU without a coordinator). Models in
    ``replicate`` get a second copy on another runtime when loaded (its load counts
    in ``evictions``' neighbour ``miss_bytes`` only: it is not a request's miss)."""
    out = Result()
    caches = [SimCache(policy, trace.capacity // runtimes, out) for _ in range(runtimes)]
    where: dict[str, list[SimCache]] = {}

    def target(size: int, avoid: list[SimCache]) -> SimCache:
        pool = [c for c in caches if c not in avoid] or caches
        roomy = max(pool, key=lambda c: c.capacity - c.used)
        return roomy if roomy.capacity - roomy.used >= size else min(pool, key=SimCache.oldest)

    for i, m in enumerate(trace.requests.tolist()):
        now, mid = i / rate, str(m)
        homes = [c for c in where.get(mid, []) if mid in c.entries]
        if homes:
            min(homes, key=lambda c: c.entries[mid].last_used).hit(mid, now)  # spread over the copies
            continue
        size, cost = _miss(out, trace, m, i)
        first = target(size, [])
        first.load(mid, size, cost, now)
        where[mid] = [first]
        if m in replicate and runtimes > 1:
            second = target(size, [first])
            second.load(mid, size, cost, now)
            where[mid].append(second)
            out.extra_loads += 1
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
        size, _ = _miss(out, trace, m, i)
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


def exact_lfu(trace: Trace) -> Result:
    """What an online frequency policy pays to learn the popularities (uniform sizes):
    TinyLFU with exact counts of every request since the start (no sketch, no aging)
    and a one-model window. A miss always loads; the model loaded at the previous miss
    then stays only if it has more requests than the resident with the fewest (least
    recently used among equals), which goes instead. The static optimum knows the
    popularities from the first request; this learns them as well as counting can."""
    reqs = trace.requests.tolist()
    slots = trace.capacity // int(trace.sizes[0])
    counts: dict[int, int] = {}
    last: dict[int, int] = {}
    heap: list[tuple[int, int, int]] = []  # (count, last use, model) of main; stale entries skipped
    main: set[int] = set()
    newest, out = -1, Result()
    for i, m in enumerate(reqs):
        counts[m] = counts.get(m, 0) + 1
        last[m] = i
        if m in main:
            heapq.heappush(heap, (counts[m], i, m))
            continue
        if m == newest:
            continue
        _miss(out, trace, m, i)
        if newest >= 0:
            if len(main) + 1 < slots:
                main.add(newest)
                heapq.heappush(heap, (counts[newest], last[newest], newest))
            else:
                while (top := heap[0]) and (top[2] not in main or top[:2] != (counts[top[2]], last[top[2]])):
                    heapq.heappop(heap)
                if counts[newest] > top[0]:  # admitted: main's weakest goes
                    heapq.heappop(heap)
                    main.discard(top[2])
                    main.add(newest)
                    heapq.heappush(heap, (counts[newest], last[newest], newest))
                out.evictions += 1
        newest = m
    return out


def policies(ttl_idle_s: list[float], *, adaptive: bool = True) -> dict[str, ev.EvictionPolicy]:
    """The built-in policies as the policy document builds them (default parameters)."""
    out = {name: eviction_policy(eviction_setting(name)) for name in ("lru", "lfu", "gdsf")}
    for idle in ttl_idle_s:
        out[f"ttl (idle {idle:g} s)"] = eviction_policy(eviction_setting({"policy": "ttl", "idle_s": idle}))
    if adaptive:
        out["adaptive"] = eviction_policy(eviction_setting("adaptive"))
    return out


def compare(trace: Trace, rate: float, ours: dict[str, ev.EvictionPolicy], *, reference: bool = True,
            sim: Callable[[Trace, ev.EvictionPolicy, float], Result] = simulate,
            names: tuple[str, ...] = lcs_ref.NAMES) -> dict[str, Any]:
    """Every policy (ours, then libCacheSim's ``names``, Belady, the static optimum) on one trace."""
    n = len(trace.requests)
    rows: dict[str, Any] = {name: sim(trace, pol, rate).row(n) for name, pol in ours.items()}
    sized = bool((trace.sizes != trace.sizes[0]).any())
    if reference:
        for name in names:
            rows[f"libCacheSim {name}"] = lcs_ref.run(trace, name) if lcs_ref.available() else {"skipped": "no libcachesim"}
    rows["belady (ours)" if not sized else "belady rule (ours; a heuristic with sizes)"] = belady(trace).row(n)
    if trace.independent and not sized:
        s, late = tr.static_optimum(trace)
        rows["exact-count LFU (learning reference)"] = exact_lfu(trace).row(n)
        rows["static optimum"] = {"misses": s, "miss_ratio": round(s / n, 4), "misses_second_half": late}
    return {"requests": n, "distinct_models": int(len(set(trace.requests.tolist()))),
            "capacity_bytes": trace.capacity, "scan_requests": trace.scan_requests, "policies": rows}


def _print(title: str, block: dict[str, Any]) -> None:
    print(f"\n{title}: {block['requests']} requests, {block['distinct_models']} models requested")
    print(f"{'policy':<46} {'misses':>8} {'ratio':>7} {'load s':>9} {'GiB loaded':>10} {'2nd half':>8}")
    for name, r in block["policies"].items():
        if "skipped" in r:
            print(f"{name:<46} skipped: {r['skipped']}")
            continue
        print(f"{name:<46} {r['misses']:>8} {r['miss_ratio']:>7.4f} {r.get('miss_load_seconds', ''):>9} "
              f"{r.get('miss_gib', ''):>10} {r.get('misses_second_half', ''):>8}")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def run_families(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    fams = {f.strip() for f in args.families.split(",")}
    ours = policies([])
    n, req, seed = args.models, args.requests, args.seed

    def add(key: str, title: str, block: dict[str, Any]) -> None:
        report[key] = block | {"title": title}
        _print(title, block)

    if "classic" in fams:
        for label, sized in (("uniform sizes", False), ("log-normal sizes", True)):
            trace = make_trace(args, sized)
            add(f"classic/{label}", f"classic, {label}: Zipf s={args.zipf}, room {args.capacity:.0%}",
                compare(trace, args.rate, policies(_floats(args.ttl_idle_s))))
    if "zipf" in fams:
        for s in _floats(args.zipf_grid):
            for room in _floats(args.room_grid):
                trace = tr.build(zipf_trace(n, req, s, seed), n, room, sized=False, seed=seed, independent=True)
                add(f"zipf/s={s:g}/room={room:g}", f"stationary Zipf s={s:g}, room {room:.0%}",
                    compare(trace, args.rate, ours))
    if "long" in fams:
        # What the trace length costs at the largest room: an online policy learns the
        # popularities (exact-count LFU shows the price); the static optimum knows them.
        for s in _floats(args.zipf_grid):
            trace = tr.build(zipf_trace(n, args.long_requests, s, seed), n, 0.2, sized=False, seed=seed,
                             independent=True)
            add(f"long/s={s:g}/room=0.2", f"stationary Zipf s={s:g}, room 20%, {args.long_requests} requests",
                compare(trace, args.rate, {"adaptive": ours["adaptive"]}, names=("WTinyLFU",)))
    if "drift" in fams:
        for step in [int(x) for x in _floats(args.drift_steps)]:
            trace = tr.build(tr.drift_trace(n, req, 1.0, seed, step), n, 0.1, sized=False, seed=seed)
            add(f"drift/step={step}", f"drifting Zipf s=1, room 10%, hot set slides 1 model / {step} requests",
                compare(trace, args.rate, ours))
    if "scan" in fams:
        base = zipf_trace(n, req, 1.0, seed)
        scanned, k = tr.with_scans(base, n, args.scan_every, args.scan_length)
        plain = tr.build(base, n, 0.1, sized=False, seed=seed, independent=True)
        mixed = replace(tr.build(scanned, n + k, 0.1, sized=False, seed=seed), capacity=plain.capacity,
                        scan_requests=k)
        add("scan/without", "Zipf s=1, room 10%, no scan", compare(plain, args.rate, ours))
        add("scan/with", f"the same with a {args.scan_length}-model scan every {args.scan_every} requests "
            f"({k} scan requests)", compare(mixed, args.rate, ours))
    if "sized" in fams:
        for room in (0.05, 0.1):
            trace = tr.build(zipf_trace(n, req, 1.0, seed), n, room, sized=True, seed=seed, independent=True)
            add(f"sized/room={room:g}", f"log-normal sizes (median 200 MiB), cost 0.2 s + size/500 MB/s, Zipf s=1, "
                f"room {room:.0%} of the bytes", compare(trace, args.rate, ours))
    if "mesh" in fams:
        trace = tr.build(zipf_trace(n, req, 1.0, seed), n, 0.1, sized=False, seed=seed, independent=True)
        mesh_rows = {}
        import numpy as np

        hottest = frozenset(int(x) for x in np.argsort(np.bincount(trace.requests))[::-1][:10])
        for name in ("lru", "adaptive"):
            one = simulate(trace, ours[name], args.rate).misses
            split = simulate_mesh(trace, ours[name], args.rate, args.runtimes).misses
            copies = simulate_mesh(trace, ours[name], args.rate, args.runtimes, replicate=hottest)
            mesh_rows[name] = {"one_cache_misses": one, f"{args.runtimes}_runtimes_misses": split,
                               "mesh_over_one": round(split / one, 4),
                               "hottest_10_with_a_second_copy_misses": copies.misses,
                               "second_copy_loads": copies.extra_loads,
                               "second_copies_over_one_copy": round(copies.misses / split, 4)}
            print(f"mesh {name}: one cache {one}, {args.runtimes} runtimes {split} ({split / one:.4f}x); "
                  f"second copies of the 10 hottest: {copies.misses} misses + {copies.extra_loads} copy loads")
        report["mesh"] = {"title": f"{args.runtimes} runtimes x room 10%/{args.runtimes} vs one cache of 10%, "
                          "Zipf s=1", "policies": mesh_rows}
    if "decision" in fams:
        report["decision"] = {name: decision_time(10_000, pol) for name, pol in ours.items()}
        for name, r in report["decision"].items():
            print(f"decision time at 10,000 loaded models, {name}: {r['ms_per_decision']} ms")
    return report


def decision_time(models: int, policy: ev.EvictionPolicy, repeats: int = 20) -> dict[str, Any]:
    """Seconds per eviction decision with ``models`` loaded (sketch warmed on a Zipf trace)."""
    import numpy as np

    rng = np.random.default_rng(1)
    state = policy.new_state() if policy.new_state else None
    if state is not None:
        for m in zipf_trace(models, 10 * models, 1.0, 1).tolist():
            state.record(str(m), models)
    entries = tuple(ev.EntryView(str(i), tr.UNIFORM_SIZE, float(rng.random() * 1000), 0, int(rng.integers(1, 50)),
                                 float(i), 1.0) for i in range(models))
    view = ev.CacheView(entries, 1000.0, capacity=tr.UNIFORM_SIZE * models, incoming_size=tr.UNIFORM_SIZE,
                        state=state)
    policy.victims(view, tr.UNIFORM_SIZE)  # warm the hash cache, as a running runtime has it
    t0 = time.perf_counter()
    for _ in range(repeats):
        policy.victims(view, tr.UNIFORM_SIZE)
    return {"loaded_models": models, "ms_per_decision": round(1e3 * (time.perf_counter() - t0) / repeats, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--requests", type=int, default=50_000, help="requests per trace")
    p.add_argument("--capacity", type=float, default=0.1, help="classic: fraction of the models (or bytes) that fits")
    p.add_argument("--zipf", type=float, default=1.0, help="classic: Zipf exponent s")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=100.0, help="requests per simulated second")
    p.add_argument("--ttl-idle-s", default="60,2", help="classic: idle TTLs to simulate, comma-separated seconds")
    p.add_argument("--families", default="classic,zipf,drift,scan,sized,mesh,decision")
    p.add_argument("--zipf-grid", default="0.8,1.0,1.2")
    p.add_argument("--room-grid", default="0.05,0.1,0.2")
    p.add_argument("--long-requests", type=int, default=200_000, help="long: requests per trace")
    p.add_argument("--drift-steps", default="200,50", help="requests per one-model slide of the hot set")
    p.add_argument("--scan-every", type=int, default=5000)
    p.add_argument("--scan-length", type=int, default=200)
    p.add_argument("--runtimes", type=int, default=2, help="mesh: runtimes sharing the capacity")
    p.add_argument("--quick", action="store_true", help="a quarter of the requests")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for results.json")
    args = p.parse_args()
    if args.quick:
        args.requests //= 4
    t0 = time.time()
    report: dict[str, Any] = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    report |= run_families(args)
    report["seconds"] = round(time.time() - t0, 1)
    print(f"\n{report['seconds']} s")
    save_json(args.out, report)


if __name__ == "__main__":
    main()
