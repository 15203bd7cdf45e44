"""The size-aware cache of loaded models: accounting and victim choice.

Each model is charged ``max(predicted, measured)`` bytes, fixed while it stays
loaded (an allocator that reuses an evicted model's memory must not make the
next model look free); ``used`` is the sum. A load first reserves its predicted
size (so concurrent loads cannot oversubscribe), evicting models the eviction
policy picks (never one with requests in flight); when it finishes, the
reservation becomes the final charge (evicting more if the measurement came
out larger).

The victim choice is a pure function over a frozen view
(:mod:`mesh.policy.eviction`: LRU by default, LFU, GDSF, idle TTL, adaptive, or a user's);
this class builds the view, applies the decision and keeps the policy's aging
value. The policy can be swapped at any time (a live policy change). Everything
here runs on the event loop; nothing blocks and nothing is unloaded here (the
caller does it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mesh.clock import Clock
from mesh.errors import ResourceExhausted
from mesh.policy.eviction import LRU, CacheView, EntryView, EvictionPolicy, PolicyState, candidates, lru_victims
from mesh.runtime.inline import RunEstimate

__all__ = ["Entry", "EntryView", "EvictionPolicy", "ModelCache", "lru_victims"]


@dataclass(slots=True)
class Entry:
    model_id: str
    model_type: str
    predicted: int
    #: The charge: the prediction while loading, then max(predicted, measured).
    size: int
    last_used: float
    last_used_ms: int
    loaded: bool = False
    measured: int = 0
    model: Any = None
    in_flight: int = 0
    #: Requests since loaded (the load counts as one).
    uses: int = 0
    loaded_at: float = 0.0
    load_seconds: float = 0.0
    #: The cache's aging value at the last use (LFU-DA, GDSF).
    credit: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: How long this model's inference runs (inline on the loop or in the pool).
    run: RunEstimate = field(default_factory=RunEstimate)

    def view(self) -> EntryView:
        return EntryView(self.model_id, self.size, self.last_used, self.in_flight, max(self.uses, 1),
                         self.loaded_at, self.load_seconds, self.credit)


def _mib(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)" if n >= 2**20 else f"{n} bytes"


class ModelCache:
    def __init__(self, capacity: int, clock: Clock, policy: EvictionPolicy = LRU) -> None:
        self.capacity = capacity
        self._clock = clock
        self.policy = policy
        #: The policy's aging value (GreedyDual's L): only grows while the cache lives.
        self.aging = 0.0
        self._entries: dict[str, Entry] = {}
        #: The policy's own state (``adaptive``'s sketch), fed every request and load.
        self.policy_state: PolicyState | None = policy.new_state() if policy.new_state else None

    def set_policy(self, policy: EvictionPolicy) -> None:
        """Swaps the eviction policy; loaded models keep their statistics, and the
        policy's state survives while its name and parameters stay the same."""
        same = (policy.name, policy.params) == (self.policy.name, self.policy.params)
        if not same or (self.policy_state is None) != (policy.new_state is None):
            self.policy_state = policy.new_state() if policy.new_state else None
        self.policy = policy

    # -- reading -----------------------------------------------------------

    @property
    def used(self) -> int:
        return sum(e.size for e in self._entries.values())

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def get(self, model_id: str) -> Entry | None:
        """The entry, loaded or still loading."""
        return self._entries.get(model_id)

    def loaded(self) -> list[Entry]:
        return [e for e in self._entries.values() if e.loaded]

    def loading_count(self) -> int:
        return sum(1 for e in self._entries.values() if not e.loaded)

    def oldest_lru_ms(self) -> int:
        return min((e.last_used_ms for e in self._entries.values() if e.loaded), default=0)

    def view(self, *, exclude: str = "", min_age_s: float = 0.0, incoming_size: int = 0) -> CacheView:
        """The loaded models (but ``exclude``) as the policy sees them now."""
        entries = tuple(e.view() for e in self._entries.values() if e.loaded and e.model_id != exclude)
        return CacheView(entries, self._clock.monotonic(), self.aging, min_age_s, self.capacity, incoming_size,
                         self.policy_state)

    def expired(self) -> list[str]:
        """Models the policy's idle expiry says to unload now (``ttl``); [] for others."""
        if self.policy.expired is None:
            return []
        return self.policy.expired(self.view())

    # -- changing ----------------------------------------------------------

    def touch(self, entry: Entry) -> None:
        """A request used the model."""
        if self.policy_state is not None:
            self.policy_state.record(entry.model_id, len(self._entries), entry.size, self.capacity,
                                     entry.load_seconds, self._clock.monotonic())
        self._used(entry)

    def _used(self, entry: Entry) -> None:
        entry.last_used = self._clock.monotonic()
        entry.last_used_ms = self._clock.now_ms()
        entry.uses += 1
        entry.credit = self.aging

    def reserve(self, model_id: str, model_type: str, predicted: int, *, mesh_full: bool = False) -> list[Entry]:
        """Adds a loading entry charged ``predicted``; returns the evicted entries.

        ``mesh_full``: the router placed this load here with no room anywhere, so
        the policy's churn guard (``min_age_s``) applies. Raises ResourceExhausted
        (changing nothing) when eviction cannot make room.
        """
        if model_id in self._entries:
            raise ValueError(f"{model_id} is already in the cache")
        victims = self._make_room(model_id, predicted, guard=mesh_full)
        if self.policy_state is not None:
            self.policy_state.missed(model_id)
        now = self._clock.monotonic()
        self._entries[model_id] = Entry(model_id, model_type, predicted, predicted, now, self._clock.now_ms())
        return victims

    def commit(self, model_id: str, model: Any, measured: int, load_seconds: float = 0.0) -> list[Entry]:
        """The load finished: charge max(predicted, measured); returns entries evicted
        to fit a measurement larger than the prediction. On ResourceExhausted the
        entry stays reserved; the caller removes it and unloads the model."""
        entry = self._entries[model_id]
        final = max(entry.predicted, measured)
        victims = self._make_room(model_id, final - entry.size, exclude=model_id, what="its measured size needs")
        entry.size, entry.measured, entry.model, entry.loaded = final, measured, model, True
        entry.loaded_at, entry.load_seconds = self._clock.monotonic(), load_seconds
        self._used(entry)  # the load, not a request: the waiting request touches it next
        return victims

    def remove(self, model_id: str) -> Entry | None:
        return self._entries.pop(model_id, None)

    def _make_room(self, model_id: str, needed: int, exclude: str = "", what: str = "it needs",
                   guard: bool = False) -> list[Entry]:
        free = self.free
        if needed <= free:
            return []
        min_age = self.policy.min_age_s if guard else 0.0
        view = self.view(exclude=exclude, min_age_s=min_age, incoming_size=needed if not exclude else 0)
        chosen = self.policy.victims(view, needed - free)
        if chosen is not None and (set(chosen.victims) - {e.model_id for e in candidates(view)}
                                   or sum(self._entries[m].size for m in set(chosen.victims)) < needed - free):
            chosen = None  # a user policy naming too little, busy or unknown models cannot make room
        if chosen is None:
            views = view.entries
            idle = sum(v.size for v in views if not v.in_flight)
            busy = sum(v.size for v in views if v.in_flight)
            loading = sum(e.size for e in self._entries.values() if not e.loaded and e.model_id != exclude)
            raise ResourceExhausted(
                f"no room for model {model_id!r}: {what} {_mib(needed)}, {_mib(max(free, 0))} are free of "
                f"{_mib(self.capacity)} capacity; evicting every idle model would free {_mib(idle)} "
                f"({_mib(busy)} held by models with requests in flight, {_mib(loading)} by loads in progress)"
                + (f"; the churn guard keeps models loaded less than {min_age:g}s ago (the mesh is full)"
                   if min_age else "")
            )
        self.aging = max(self.aging, chosen.aging)
        return [self._entries.pop(m) for m in dict.fromkeys(chosen.victims)]
