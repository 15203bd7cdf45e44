"""The size-aware cache of loaded models: accounting and victim choice.

Each model is charged ``max(predicted, measured)`` bytes, fixed while it stays
loaded (an allocator that reuses an evicted model's memory must not make the
next model look free); ``used`` is the sum. A load first reserves its predicted
size (so concurrent loads cannot oversubscribe), evicting least-recently-used
models that have no requests in flight; when it finishes, the reservation
becomes the final charge (evicting more if the measurement came out larger).

The victim choice is a pure function over a frozen view (:class:`EntryView`),
so other policies (LFU, GDSF, idle TTL: issue #7) plug in as
``EvictionPolicy`` without touching this class. Everything here runs on the
event loop; nothing blocks and nothing is unloaded here (the caller does it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh.clock import Clock
from mesh.errors import ResourceExhausted


@dataclass(frozen=True, slots=True)
class EntryView:
    model_id: str
    size: int
    #: Monotonic seconds of the last request (or of the load).
    last_used: float
    in_flight: int


#: (loaded models, bytes to free) -> model ids to evict, in order; None if the
#: policy cannot free that much.
EvictionPolicy = Callable[[Sequence[EntryView], int], list[str] | None]


def lru_victims(entries: Sequence[EntryView], needed: int) -> list[str] | None:
    """Least recently used first, skipping models with requests in flight."""
    if needed <= 0:
        return []
    victims, freed = [], 0
    for e in sorted(entries, key=lambda e: (e.last_used, e.model_id)):
        if e.in_flight:
            continue
        victims.append(e.model_id)
        freed += e.size
        if freed >= needed:
            return victims
    return None


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
    extra: dict[str, Any] = field(default_factory=dict)

    def view(self) -> EntryView:
        return EntryView(self.model_id, self.size, self.last_used, self.in_flight)


def _mib(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)" if n >= 2**20 else f"{n} bytes"


class ModelCache:
    def __init__(self, capacity: int, clock: Clock, policy: EvictionPolicy = lru_victims) -> None:
        self.capacity = capacity
        self._clock = clock
        self._policy = policy
        self._entries: dict[str, Entry] = {}

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

    # -- changing ----------------------------------------------------------

    def touch(self, entry: Entry) -> None:
        entry.last_used = self._clock.monotonic()
        entry.last_used_ms = self._clock.now_ms()

    def reserve(self, model_id: str, model_type: str, predicted: int) -> list[Entry]:
        """Adds a loading entry charged ``predicted``; returns the evicted entries.

        Raises ResourceExhausted (changing nothing) when eviction cannot make room.
        """
        if model_id in self._entries:
            raise ValueError(f"{model_id} is already in the cache")
        victims = self._make_room(model_id, predicted)
        now = self._clock.monotonic()
        self._entries[model_id] = Entry(model_id, model_type, predicted, predicted, now, self._clock.now_ms())
        return victims

    def commit(self, model_id: str, model: Any, measured: int) -> list[Entry]:
        """The load finished: charge max(predicted, measured); returns entries evicted
        to fit a measurement larger than the prediction. On ResourceExhausted the
        entry stays reserved; the caller removes it and unloads the model."""
        entry = self._entries[model_id]
        final = max(entry.predicted, measured)
        victims = self._make_room(model_id, final - entry.size, exclude=model_id, what="its measured size needs")
        entry.size, entry.measured, entry.model, entry.loaded = final, measured, model, True
        self.touch(entry)
        return victims

    def remove(self, model_id: str) -> Entry | None:
        return self._entries.pop(model_id, None)

    def _make_room(self, model_id: str, needed: int, exclude: str = "", what: str = "it needs") -> list[Entry]:
        free = self.free
        if needed <= free:
            return []
        views = [e.view() for e in self._entries.values() if e.loaded and e.model_id != exclude]
        chosen = self._policy(views, needed - free)
        if chosen is None:
            idle = sum(v.size for v in views if not v.in_flight)
            busy = sum(v.size for v in views if v.in_flight)
            loading = sum(e.size for e in self._entries.values() if not e.loaded and e.model_id != exclude)
            raise ResourceExhausted(
                f"no room for model {model_id!r}: {what} {_mib(needed)}, {_mib(max(free, 0))} are free of "
                f"{_mib(self.capacity)} capacity; evicting every idle model would free {_mib(idle)} "
                f"({_mib(busy)} held by models with requests in flight, {_mib(loading)} by loads in progress)"
            )
        return [self._entries.pop(m) for m in chosen]
