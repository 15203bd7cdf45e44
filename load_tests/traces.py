"""Seeded request traces for the policy simulator: which model each request asks for.

- ``zipf``: independent requests, rank r with weight 1/r^s, ranks shuffled.
- ``drift``: the same Zipf law over ranks, but the rank -> model mapping slides
  by one model every ``step`` requests: each model climbs to the top and then
  falls to the bottom, so the hot set turns over continuously.
- ``scan``: a Zipf trace with bursts of never-seen models (a batch job touching
  each once) inserted every ``every`` requests; the Zipf part is the same trace
  as without the scan, so the two can be compared request for request.
- sizes: uniform, or log-normal (median 200 MiB, 1 MiB..16 GiB) with a load cost
  of 0.2 s + size / 500 MB/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNIFORM_SIZE = 64 * 2**20


@dataclass(frozen=True)
class Trace:
    requests: np.ndarray  # model index per request
    sizes: np.ndarray  # bytes per model
    costs: np.ndarray  # load seconds per model
    capacity: int  # bytes
    #: Requests that are a scan's (each a compulsory miss); 0 without a scan.
    scan_requests: int = 0
    #: The trace's requests are independent draws from one law (a static optimum exists).
    independent: bool = False


def zipf_ranks(models: int, requests: int, s: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, models + 1) ** s
    return rng.choice(models, size=requests, p=weights / weights.sum())


def zipf_trace(models: int, requests: int, s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    order = rng.permutation(models)  # which model has which popularity rank
    return order[zipf_ranks(models, requests, s, rng)]


def drift_trace(models: int, requests: int, s: float, seed: int, step: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    order = rng.permutation(models)
    ranks = zipf_ranks(models, requests, s, rng)
    return order[(ranks + np.arange(requests) // max(step, 1)) % models]


def with_scans(base: np.ndarray, models: int, every: int, length: int) -> tuple[np.ndarray, int]:
    """``base`` with a burst of ``length`` new models (ids from ``models`` up) after
    every ``every`` requests; returns the trace and the number of scan requests."""
    parts, next_id, scanned = [], models, 0
    for start in range(0, len(base), every):
        parts.append(base[start:start + every])
        if start + every < len(base):
            parts.append(np.arange(next_id, next_id + length))
            next_id += length
            scanned += length
    return np.concatenate(parts), scanned


def sizes_and_costs(models: int, sized: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not sized:
        return np.full(models, UNIFORM_SIZE, dtype=np.int64), np.full(models, 1.0)
    rng = np.random.default_rng(seed + 1)
    sizes = np.clip(rng.lognormal(np.log(200 * 2**20), 1.0, models), 2**20, 16 * 2**30).astype(np.int64)
    return sizes, 0.2 + sizes / 500e6  # a fixed cost plus 500 MB/s


def build(requests: np.ndarray, models: int, room: float, *, sized: bool, seed: int, scan_requests: int = 0,
          independent: bool = False) -> Trace:
    """Room: the fraction of the models (uniform) or of their bytes (sized) that fits."""
    sizes, costs = sizes_and_costs(models, sized, seed)
    if sized:
        capacity = int(sizes.sum() * room)
    else:
        capacity = UNIFORM_SIZE * max(1, round(room * models))
    return Trace(requests, sizes, costs, capacity, scan_requests, independent)


def static_optimum(trace: Trace) -> tuple[int, int]:
    """Misses of the best fixed set of models for this trace (uniform sizes): the
    most requested ones, loaded on first use (their first references are misses);
    and its misses in the trace's second half (the set is warm by then)."""
    slots = trace.capacity // int(trace.sizes[0])
    counts = np.bincount(trace.requests)
    top = np.argsort(counts, kind="stable")[::-1][:slots]
    kept = counts[top]
    second = trace.requests[len(trace.requests) // 2:]
    late = int(len(second) - np.isin(second, top).sum())
    return int(len(trace.requests) - kept.sum() + np.count_nonzero(kept)), late
