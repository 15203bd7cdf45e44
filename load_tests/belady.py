"""Belady's offline optimum (MIN): the fewest misses any cache of ``k`` equal-size slots
could have had on a given request trace, evicting the entry used furthest in the future.

It bounds every online policy from below, also one split over several runtimes whose
slots add up to ``k`` (a split cache is a restricted single cache). Misses include the
first (compulsory) reference of each model, as the runtimes' load counts do.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def belady_misses(trace: Sequence[str], k: int) -> int:
    if k <= 0:
        return len(trace)
    never = len(trace) + 1
    next_use = [never] * len(trace)
    seen: dict[str, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        next_use[i] = seen.get(trace[i], never)
        seen[trace[i]] = i
    cached: dict[str, int] = {}  # model -> its next use
    heap: list[tuple[int, str]] = []  # (-next use, model); stale entries skipped on pop
    misses = 0
    for i, model in enumerate(trace):
        if model not in cached:
            misses += 1
            if len(cached) >= k:
                while True:
                    neg, victim = heapq.heappop(heap)
                    if cached.get(victim) == -neg:
                        del cached[victim]
                        break
        cached[model] = next_use[i]
        heapq.heappush(heap, (-next_use[i], model))
    return misses


def lru_misses(trace: Sequence[str], k: int) -> int:
    """A single global LRU of ``k`` slots on the same trace (a reference point, not a bound)."""
    from collections import OrderedDict

    cache: OrderedDict[str, None] = OrderedDict()
    misses = 0
    for model in trace:
        if model in cache:
            cache.move_to_end(model)
            continue
        misses += 1
        cache[model] = None
        if len(cache) > k:
            cache.popitem(last=False)
    return misses
