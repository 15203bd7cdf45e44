"""``adaptive``: W-TinyLFU-style eviction with admission, size and cost, for a model cache.

The shape is Caffeine's W-TinyLFU: newcomers enter a small *window*; a model
pushed out of the window (the *candidate*) must win *admission* against the
main segment's weakest model (the *victim*) on its recent request frequency,
estimated by a count-min sketch with a doorkeeper and periodic halving
(:mod:`mesh.policy.sketch`); the loser is evicted. The window's share of the
capacity is hill-climbed on the hit ratio (Caffeine's climber). Beyond
W-TinyLFU, the sketch's *memory* (how many requests it remembers before halving)
is chosen by miniature simulation: shadow caches replay a hashed sample of the
requests with four memories (each a quarter of the one before), and the decision
uses the one that hits most, so a stable popularity gets a long, low-noise memory
(with counters that saturate late enough to rank rare models) and a drifting hot
set a short one.

What differs, because a model load is not a cache insert:

- A request that misses always gets its model: it waits for the load, so the
  newcomer is never refused. Admission decides *which models go* to make room.
  A newcomer that would lose admission still loads, sits in the window, and is
  the first victim once newer models push it out, unless requests in the
  meantime raised its frequency above the main victim's.
- Segments are derived from the frozen view, not stored: the window is the
  newest-loaded models whose bytes fit the window share (always at least the
  newest one), a FIFO as in S3-FIFO's small queue; everything older is main.
  So unloads from anywhere (SPI unload, idle sweep, a failed load) and a live
  policy switch leave no state to repair.
- Main evicts by value, not SLRU order: estimated frequency x reload cost /
  size (cost = measured load seconds, or 1 with ``cost: one``), least recently
  used first among equals. The runtime decides once per load (seconds apart),
  with the whole view in hand, so an O(n) scan is affordable where Caffeine
  needs O(1) per access, and value keeps a cheap-to-reload 2 GB model from
  displacing ten costly small ones.

State: :class:`AdaptiveState`, owned by the runtime's cache and handed to the
decision through ``CacheView.state``. It is the sketch (fixed size), the
climber (a handful of numbers) and four shadow caches (each at most the
models that fit a ``shadow_rate`` share of the capacity, with a sketch of
``shadow_rate x sketch_width``); it grows with nothing registered, and the
decision reads it without changing it. The cache feeds it with :meth:`AdaptiveState.record`
(every request) and :meth:`AdaptiveState.missed` (every load).
"""

from __future__ import annotations

import heapq
import math
import operator
from dataclasses import dataclass, replace

import numpy as np

from mesh.policy.eviction import MIB, CacheView, EntryView, Eviction
from mesh.policy.sketch import FrequencySketch, sampled

STEP = 0.0625
STEP_DECAY = 0.98
RESTART = 0.05
#: Requests per loaded model in one climber sample (Caffeine: 10).
CLIMB_SAMPLE = 10
#: Counters saturate here at a memory of 64 requests per loaded model (Caffeine: 15,
#: 4 bits). Bytes allow more, and with sizes a saturated count ranks a hot 2 GiB model
#: with a lukewarm 20 MiB one. A longer memory gets a proportionally higher cap (at most
#: 255): it is there to tell rare models apart, which capped counts cannot.
COUNTER_CAP = 31
#: The memories the shadows choose among: ``sample_factor`` divided by these.
MEMORY_DIVISORS = (1, 4, 16, 64)
#: A shorter memory replaces the longest only when its shadow hits this much more.
SHADOW_MARGIN = 0.03

_MODEL_ID = operator.attrgetter("model_id")
_USES = operator.attrgetter("uses")
_COLUMNS = tuple(operator.attrgetter(f) for f in ("size", "last_used", "loaded_at", "load_seconds", "in_flight"))


def counter_cap(memory: float) -> int:
    """The counters' cap for a memory (requests per loaded model between halvings)."""
    return int(min(255, max(COUNTER_CAP, round(COUNTER_CAP * memory / 64))))


class AdaptiveState:
    """The sketch, the memory chooser and the window climber of one cache
    (bounded, process-local).

    Memory (how long the sketch remembers: its reset period, in requests per
    loaded model) is chosen among ``sample_factor``, a quarter, a sixteenth and
    a sixty-fourth of it by *miniature simulation*: for each, a shadow cache holding
    ``shadow_rate`` of the capacity replays the requests for the
    ``shadow_rate`` of models sampled by hash (SHARDS-style spatial sampling),
    with this same policy and that fixed memory; every climber sample the
    decision switches to the memory whose shadow hit most (decayed by half per
    sample). A stable popularity is served best by the long memory (less
    noise), a drifting hot set by a short one. W-TinyLFU keeps one memory.

    Window: Caffeine's hill climber moves the window's share between
    ``window`` and ``max_window`` on the hit ratio of each sample (``10 x`` the
    models loaded, in requests): keep going while the hit ratio does not fall,
    turn back when it does; step 1/16 of the range, decaying x0.98 per sample,
    restarting when the hit ratio moves by 5 %.
    """

    def __init__(self, *, window: float = 0.01, sample_factor: int = 128, sketch_width: int = 16384,
                 climb: bool = True, max_window: float = 0.05, shadow_rate: float = 0.25) -> None:
        self.min_window, self.max_window = window, max(window, max_window)
        self.climb = climb
        self.recency = 0.0
        self.memories = tuple(max(1.0, sample_factor / d) for d in MEMORY_DIVISORS)
        #: Index into ``memories`` of the memory the decision uses (0: the longest).
        self.active = 0
        self.sketch = FrequencySketch(sketch_width, period=sample_factor * 16, cap=counter_cap(sample_factor))
        self.shadow_rate = shadow_rate
        small = max(16, 1 << max(4, int(sketch_width * shadow_rate).bit_length() - 1))
        self.miniatures = [Miniature(m, small) for m in self.memories] if climb and shadow_rate > 0 else []
        self._requests = 0
        self._misses = 0
        self._previous = 0.0
        # Start by shrinking, as Caffeine does: the warm-up's rising hit ratio then
        # keeps the window small unless recency really pays.
        self._step = -STEP

    @property
    def window(self) -> float:
        """The window's share of the capacity now."""
        return self.min_window + self.recency * (self.max_window - self.min_window)

    @property
    def memory(self) -> float:
        """Requests per loaded model between two halvings of the sketch now."""
        return self.memories[self.active]

    def record(self, model_id: str, resident: int, size: int = 0, capacity: int = 0, load_seconds: float = 0.0,
               now: float = 0.0) -> None:
        """A request for ``model_id`` (hit or miss); ``resident``: models loaded now;
        the model's bytes and load time and the cache's capacity feed the shadows."""
        resident = max(resident, 16)
        self.sketch.period = int(self.memory * resident)
        self.sketch.record(model_id)
        if self.miniatures and size > 0 and capacity > 0 and sampled(model_id, self.shadow_rate):
            for mini in self.miniatures:
                mini.access(model_id, size, load_seconds, capacity * self.shadow_rate, now)
        self._requests += 1
        if self._requests >= CLIMB_SAMPLE * resident:
            self._adapt()

    def missed(self, model_id: str) -> None:
        """``model_id`` is being loaded (a miss, for the climber's hit ratio)."""
        self._misses += 1

    def frequency(self, model_id: str) -> int:
        return self.sketch.estimate(model_id)

    def frequencies(self, model_ids: list[str]) -> np.ndarray:
        return self.sketch.estimates(model_ids)

    def _adapt(self) -> None:
        hit_ratio = 1.0 - min(self._misses, self._requests) / self._requests
        self._requests = self._misses = 0
        if not self.climb:
            return
        for mini in self.miniatures:
            mini.score, mini.hits = mini.score / 2 + mini.hits, 0
        if self.miniatures:
            scores = [m.score for m in self.miniatures]
            best = max(range(len(scores)), key=lambda i: (scores[i], -i))
            # The longest memory unless a shorter one is clearly better: the shadows are
            # samples, and on a stable popularity their scores differ by noise only.
            chosen = 0 if scores[0] >= (1 - SHADOW_MARGIN) * scores[best] else best
            # Switching to a shorter memory: age the counts as if it had always been
            # that short (a halving per halving of the memory), so stale counts go now.
            for _ in range(int(round(math.log2(self.memories[self.active] / self.memories[chosen])))):
                self.sketch.reset()
            self.active = chosen
            self.sketch.cap = counter_cap(self.memories[chosen])
        change = hit_ratio - self._previous
        amount = self._step if change >= 0 else -self._step
        self._step = (STEP if amount >= 0 else -STEP) if abs(change) >= RESTART else STEP_DECAY * amount
        self._previous = hit_ratio
        self.recency = min(max(self.recency + amount, 0.0), 1.0)


class Miniature:
    """A shadow cache of sampled models with one fixed memory (its hits are the score)."""

    def __init__(self, memory: float, sketch_width: int) -> None:
        self.state = AdaptiveState(sample_factor=max(1, round(memory)), sketch_width=sketch_width, climb=False)
        self.entries: dict[str, EntryView] = {}
        self.used = 0
        self.hits = 0
        self.score = 0.0

    def access(self, model_id: str, size: int, load_seconds: float, capacity: float, now: float) -> None:
        self.state.record(model_id, len(self.entries))
        e = self.entries.get(model_id)
        if e is not None:
            self.hits += 1
            self.entries[model_id] = replace(e, last_used=now)
            return
        if size > capacity:
            return
        if self.used + size > capacity:
            view = CacheView(tuple(self.entries.values()), now, capacity=int(capacity), incoming_size=size,
                             state=self.state)
            out = Adaptive()(view, int(self.used + size - capacity))
            for gone in out.victims if out is not None else list(self.entries):
                self.used -= self.entries.pop(gone).size
        self.entries[model_id] = EntryView(model_id, size, now, 0, 1, now, load_seconds)
        self.used += size


@dataclass(frozen=True, slots=True)
class Adaptive:
    """The decision: pure over the view and its (read-only) :class:`AdaptiveState`."""

    #: ``load_seconds``: a reload costs its measured load time (1 s when unknown); ``one``: 1 each.
    cost: str = "load_seconds"

    def __call__(self, view: CacheView, needed: int) -> Eviction | None:
        if needed <= 0:
            return Eviction([], view.aging)
        state = view.state if isinstance(view.state, AdaptiveState) else None
        entries = view.entries
        n = len(entries)
        # One C-level pass per field (no per-entry Python frames): at 10,000 loaded
        # models the decision is a few vector operations, not a Python loop.
        ids = list(map(_MODEL_ID, entries))
        sizes, last, loaded_at, load_s, in_flight = (
            np.fromiter(map(get, entries), np.float64, n) for get in _COLUMNS)
        freq = state.frequencies(ids) if state is not None else np.fromiter(map(_USES, entries), np.float64, n)
        cost = np.ones(n) if self.cost == "one" else np.where(load_s > 0, load_s, 1.0)
        value = freq * cost / np.maximum(sizes / MIB, 1e-6)
        capacity = view.capacity or float(sizes.sum()) + needed
        budget = (state.window if state is not None else 0.01) * capacity
        incoming = view.incoming_size or needed
        # candidates()'s rule, as a mask: nothing in flight, nothing younger than the churn guard.
        evictable = in_flight == 0
        if view.min_age_s > 0:
            evictable &= view.now - loaded_at >= view.min_age_s

        # The window: newest loads first while their bytes fit (at least the newest).
        newest = np.lexsort((last, loaded_at))[::-1]
        cum = np.cumsum(sizes[newest])
        in_before = max(1, int(np.searchsorted(cum, budget, side="right"))) if n else 0
        in_after = int(np.searchsorted(cum, budget - incoming, side="right")) if incoming < budget else 0

        # Pushed out of the window by the newcomer: each must win admission (oldest first).
        pushed = [int(i) for i in newest[in_after:in_before][::-1] if evictable[i]]
        main_idx = newest[in_before:]
        main_idx = main_idx[evictable[main_idx]]
        main = main_idx[np.lexsort((last[main_idx], value[main_idx]))]
        window = [int(i) for i in newest[:in_after][::-1] if evictable[i]]
        admitted: list[tuple[float, float, int]] = []  # candidates that won, merged into main's order
        victims: list[str] = []
        freed = 0.0
        m = 0

        def weakest() -> int | None:
            best = int(main[m]) if m < len(main) else None
            if admitted and (best is None or (admitted[0][0], admitted[0][1]) < (value[best], last[best])):
                return admitted[0][2]
            return best

        def take(i: int) -> None:
            nonlocal freed, m
            if m < len(main) and main[m] == i:
                m += 1
            elif admitted and admitted[0][2] == i:
                heapq.heappop(admitted)
            victims.append(ids[i])
            freed += sizes[i]

        while freed < needed:
            victim = weakest()
            if pushed and victim is not None:
                cand = pushed.pop(0)
                if value[cand] > value[victim]:  # admitted: the victim goes, the candidate joins main
                    take(victim)
                    heapq.heappush(admitted, (float(value[cand]), float(last[cand]), cand))
                else:  # incumbents win ties
                    victims.append(ids[cand])
                    freed += sizes[cand]
            elif pushed:
                cand = pushed.pop(0)
                victims.append(ids[cand])
                freed += sizes[cand]
            elif victim is not None:
                take(victim)
            elif window:
                w = window.pop(0)
                victims.append(ids[w])
                freed += sizes[w]
            else:
                return None
        return Eviction(victims, view.aging)
