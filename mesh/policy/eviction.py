"""Eviction: which loaded models a runtime drops to make room (or because they idle).

Every policy is a pure function of a frozen :class:`CacheView` (the loaded
models and the cache's aging value) and the bytes to free, returning an
:class:`Eviction` (victims in order, the new aging value) or None when it cannot
free that much. The runtime's cache (``mesh/runtime/cache.py``) builds the view,
applies the decision and keeps the aging value; an operator can unit-test a
tuning on hand-built views.

Rules every policy gets from :func:`candidates`: a model with requests in flight
is never a victim, and when the view carries a churn guard (``min_age_s``, set
for loads the router placed on a full mesh) neither is a model loaded less than
that long ago.

- ``lru``: least recently used first.
- ``lfu``: least frequently used first, with dynamic aging (LFU-DA): priority =
  credit + uses, where credit is the cache's aging value when the model was last
  used and the aging value becomes the priority of the last victim, so a model
  that was popular long ago ages out. ``half_life_s`` > 0 also halves a model's
  use count for every ``half_life_s`` it sits idle.
- ``gdsf``: GreedyDual-Size-Frequency: priority = credit + uses x cost / MiB,
  cost = the measured load seconds (or 1 with ``cost: one``). Cheap-to-reload,
  big, rarely used models go first.
- ``ttl``: LRU when room is needed, and :func:`idle_expired` models (unused for
  ``idle_s``) are unloaded by the runtime's sweep even when the cache is not full.
- ``adaptive``: W-TinyLFU-style admission over a small window, a frequency
  sketch with aging and a hill-climbed window, size- and cost-aware
  (:mod:`mesh.policy.adaptive`; its state rides in ``CacheView.state``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

MIB = float(2**20)


@dataclass(frozen=True, slots=True)
class EntryView:
    model_id: str
    #: Bytes charged to the model.
    size: int
    #: Monotonic seconds of the last request (or of the load).
    last_used: float
    in_flight: int = 0
    #: Requests served since it was loaded (the load counts as one).
    uses: int = 1
    #: Monotonic seconds when its load finished.
    loaded_at: float = 0.0
    #: Measured load time in seconds (fetch + deserialise); 0 if unknown.
    load_seconds: float = 0.0
    #: The cache's aging value when the model was last used (LFU-DA, GDSF).
    credit: float = 0.0


@dataclass(frozen=True, slots=True)
class CacheView:
    entries: tuple[EntryView, ...]
    #: Monotonic seconds now.
    now: float = 0.0
    #: The cache's aging value (GreedyDual's L); starts at 0, only grows.
    aging: float = 0.0
    #: Churn guard: models loaded less than this long ago are not victims (0: off).
    min_age_s: float = 0.0
    #: The cache's capacity in bytes (0: unknown).
    capacity: int = 0
    #: Bytes of the model being made room for (0: unknown, take the bytes to free).
    incoming_size: int = 0
    #: The policy's own state (``EvictionPolicy.new_state``), read-only to the decision.
    state: object = None


@dataclass(frozen=True, slots=True)
class Eviction:
    victims: list[str]
    #: The cache's new aging value.
    aging: float = 0.0


#: (view, bytes to free) -> the eviction, or None if the policy cannot free that much.
VictimFn = Callable[[CacheView, int], "Eviction | None"]


def candidates(view: CacheView) -> list[EntryView]:
    """The models a policy may evict: none with requests in flight, none younger
    than the churn guard."""
    return [e for e in view.entries
            if not e.in_flight and (view.min_age_s <= 0 or view.now - e.loaded_at >= view.min_age_s)]


def take_lowest(view: CacheView, needed: int, priority: Callable[[EntryView], float]) -> Eviction | None:
    """Victims by ascending priority until ``needed`` bytes are freed; the aging
    value becomes the highest priority evicted (never lower than before)."""
    if needed <= 0:
        return Eviction([], view.aging)
    victims, freed, aging = [], 0, view.aging
    for e in sorted(candidates(view), key=lambda e: (priority(e), e.last_used, e.model_id)):
        victims.append(e.model_id)
        freed += e.size
        aging = max(aging, priority(e))
        if freed >= needed:
            return Eviction(victims, aging)
    return None


def lru(view: CacheView, needed: int) -> Eviction | None:
    """Least recently used first."""
    return _keep_aging(view, take_lowest(view, needed, lambda e: e.last_used))


def _keep_aging(view: CacheView, ev: Eviction | None) -> Eviction | None:
    # LRU and TTL have no aging: their priority is a timestamp, not a credit.
    return None if ev is None else Eviction(ev.victims, view.aging)


@dataclass(frozen=True, slots=True)
class Lfu:
    """LFU with dynamic aging; ``half_life_s`` > 0 decays idle models' counts."""

    half_life_s: float = 0.0

    def frequency(self, view: CacheView, e: EntryView) -> float:
        if self.half_life_s <= 0:
            return float(e.uses)
        return e.uses * math.pow(0.5, max(0.0, view.now - e.last_used) / self.half_life_s)

    def __call__(self, view: CacheView, needed: int) -> Eviction | None:
        return take_lowest(view, needed, lambda e: e.credit + self.frequency(view, e))


@dataclass(frozen=True, slots=True)
class Gdsf:
    """GreedyDual-Size-Frequency: credit + uses x cost / MiB."""

    #: ``load_seconds``: the measured load time (1 s when unknown); ``one``: every load costs 1.
    cost: str = "load_seconds"

    def priority(self, e: EntryView) -> float:
        cost = 1.0 if self.cost == "one" or e.load_seconds <= 0 else e.load_seconds
        return e.credit + e.uses * cost / max(e.size / MIB, 1e-6)

    def __call__(self, view: CacheView, needed: int) -> Eviction | None:
        return take_lowest(view, needed, self.priority)


@dataclass(frozen=True, slots=True)
class Ttl:
    """LRU when room is needed; models idle for ``idle_s`` expire anyway."""

    idle_s: float = 300.0
    #: How often the runtime sweeps for expired models (None: a quarter of idle_s, at most 10 s).
    sweep_s: float | None = None

    def __call__(self, view: CacheView, needed: int) -> Eviction | None:
        return lru(view, needed)

    def expired(self, view: CacheView) -> list[str]:
        return idle_expired(view, self.idle_s)

    @property
    def sweep_interval_s(self) -> float:
        return self.sweep_s if self.sweep_s else min(max(self.idle_s / 4, 0.05), 10.0)


def idle_expired(view: CacheView, idle_s: float) -> list[str]:
    """Models unused for ``idle_s`` or more, oldest first (never one in flight)."""
    old = [e for e in view.entries if not e.in_flight and view.now - e.last_used >= idle_s]
    return [e.model_id for e in sorted(old, key=lambda e: (e.last_used, e.model_id))]


class PolicyState(Protocol):
    """What a stateful policy keeps between decisions (``adaptive``'s sketch); the
    cache owns it, feeds it every request and load, and passes it in the view."""

    def record(self, model_id: str, resident: int, size: int = 0, capacity: int = 0, load_seconds: float = 0.0,
               now: float = 0.0) -> None:
        """A request for the model (hit or miss); ``resident``: models loaded now;
        its bytes and load time, the cache's capacity, the clock."""

    def missed(self, model_id: str) -> None:
        """The model is being loaded."""


@dataclass(frozen=True, slots=True)
class EvictionPolicy:
    """A named, parameterised victim function, as the runtime applies it."""

    name: str
    victims: VictimFn = lru
    #: Idle expiry for the sweep (``ttl``); None: nothing expires.
    expired: Callable[[CacheView], list[str]] | None = None
    sweep_interval_s: float = 0.0
    #: Churn guard in seconds (0: off), applied when the mesh is full.
    min_age_s: float = 0.0
    params: dict[str, object] = field(default_factory=dict)
    #: Makes the policy's state (None: stateless); kept while name and params stay.
    new_state: Callable[[], PolicyState] | None = None


LRU = EvictionPolicy("lru")


def lru_victims(entries: Sequence[EntryView], needed: int) -> list[str] | None:
    """LRU over a plain list of entries (the pre-policy interface, kept for callers)."""
    ev = lru(CacheView(tuple(entries)), needed)
    return None if ev is None else ev.victims
