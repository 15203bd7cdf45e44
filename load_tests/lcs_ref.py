"""Reference policies from libCacheSim (``pip install libcachesim``, the ``bench`` extra)
on the simulator's traces: LRU, ARC, S3-FIFO, W-TinyLFU, and Belady (BeladySize
with mixed sizes). The same requests, sizes and capacity as our policies get;
misses include first references. Absent package: :func:`available` is False and
the simulator reports the rows as skipped.
"""

from __future__ import annotations

from typing import Any

from load_tests.traces import Trace

try:
    import libcachesim as lcs
except ImportError:  # pragma: no cover - the bench extra is not installed
    lcs = None

NAMES = ("LRU", "ARC", "S3FIFO", "WTinyLFU", "Belady")


def available() -> bool:
    return lcs is not None


def run(trace: Trace, name: str) -> dict[str, Any]:
    """Misses, load seconds and bytes loaded of libCacheSim's ``name`` on ``trace``."""
    assert lcs is not None
    sized = bool((trace.sizes != trace.sizes[0]).any())
    reqs = trace.requests.tolist()
    belady = name == "Belady"
    cls = {"LRU": lcs.LRU, "ARC": lcs.ARC, "S3FIFO": lcs.S3FIFO, "WTinyLFU": lcs.WTinyLFU,
           "Belady": lcs.BeladySize if sized else lcs.Belady}[name]
    # Uniform sizes: one slot per model (libCacheSim counts objects); else MiB (in
    # bytes its W-TinyLFU sizes the sketch past int32 and stops admitting).
    unit = 2**20 if sized else int(trace.sizes[0])
    slots = trace.capacity // unit
    if name == "WTinyLFU":
        # At 1 % of a small cache the window rounds to no object and nothing is ever
        # admitted (every request misses); Caffeine keeps at least one entry there.
        avg = float(trace.sizes.mean()) / unit
        cache = cls(slots, window_size=max(0.01, 1.5 * avg / slots))
    else:
        cache = cls(slots)
    nxt = _next_use(reqs) if belady else None
    sizes = [max(1, x) for x in (trace.sizes // unit).tolist()]
    misses, seconds, nbytes, late = 0, 0.0, 0, 0
    half = len(reqs) // 2
    for i, m in enumerate(reqs):
        req = lcs.Request(obj_size=sizes[m], obj_id=m + 1, clock_time=i,
                          next_access_vtime=nxt[i] if nxt is not None else -2)
        if not cache.get(req):
            misses += 1
            late += i >= half
            seconds += float(trace.costs[m])
            nbytes += int(trace.sizes[m])
    return {"misses": misses, "miss_ratio": round(misses / len(reqs), 4), "miss_load_seconds": round(seconds, 1),
            "miss_gib": round(nbytes / 2**30, 1), "misses_second_half": late}


def _next_use(reqs: list[int]) -> list[int]:
    never = 2**62
    out, last = [never] * len(reqs), {}
    for i in range(len(reqs) - 1, -1, -1):
        out[i] = last.get(reqs[i], never)
        last[reqs[i]] = i
    return out
