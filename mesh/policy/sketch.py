"""A bounded frequency estimate of every model a runtime was asked for.

TinyLFU's count-min sketch (Einziger, Friedman, Manes, 2017) much as Caffeine
runs it: ``depth`` rows of ``width`` byte counters saturating at ``cap``
(Caffeine: 15), one counter per row per key, conservative update; the estimate
is the row minimum. In front of it a *doorkeeper* (one bit
per slot, two slots per key) absorbs each key's first occurrence per period, so
one-off requests (a scan) never reach the counters. After ``period`` recorded
requests every counter is halved and the doorkeeper cleared (the *reset*): a
model's estimate then reflects its recent popularity, which is what lets a
frequency policy follow a drifting hot set. The memory is fixed
(``depth x width`` bytes plus ``width`` for the doorkeeper) whatever the number
of models registered.

Keys are hashed with BLAKE2b (stable across processes, unlike ``hash(str)``), so
the simulator's figures reproduce.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

MAX_COUNT = 15


@functools.lru_cache(maxsize=1 << 16)  # bounded: hashing dominates a decision over 10,000 models
def key_hash(key: str) -> int:
    """128 stable bits of ``key``."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest(), "little")


def sampled(key: str, rate: float) -> bool:
    """Whether ``key`` is in the ``rate`` share of keys picked by hash (the same
    keys every time: spatial sampling for miniature simulations)."""
    return (key_hash(key) >> 112) < rate * 65536


@functools.lru_cache(maxsize=1 << 16)
def _indexes(key: str, width: int, depth: int) -> tuple[tuple[int, ...], int, int]:
    h = key_hash(key)
    h1, h2 = h & 0xFFFFFFFFFFFFFFFF, (h >> 64) | 1
    mask = width - 1
    # Kirsch-Mitzenmacher: row i uses h1 + i*h2; the doorkeeper two more slots.
    return (tuple((h1 + i * h2) & mask for i in range(depth)), (h1 + depth * h2) & mask, (h1 + (depth + 1) * h2) & mask)


class FrequencySketch:
    """Count-min sketch with saturating counters, doorkeeper and reset."""

    def __init__(self, width: int = 16384, depth: int = 4, period: int = 1000, cap: int = MAX_COUNT) -> None:
        if width < 16 or width & (width - 1):
            raise ValueError(f"sketch width must be a power of two >= 16, got {width}")
        self.width, self.depth, self.cap = width, depth, min(cap, 255)
        # bytearrays: fast item access from Python; numpy views for the halving.
        self._rows = [bytearray(width) for _ in range(depth)]
        self._door = bytearray(width)
        #: Requests recorded between two resets; the owner may change it.
        self.period = max(1, period)
        self._since_reset = 0
        self.resets = 0
        #: Requests recorded, halved with the counters (the estimates' scale).
        self.total = 0.0

    def record(self, key: str) -> None:
        rows, d1, d2 = _indexes(key, self.width, self.depth)
        door = self._door
        if not (door[d1] and door[d2]):
            door[d1] = door[d2] = 1  # first sight this period: the doorkeeper only
        else:
            counts = [r[i] for r, i in zip(self._rows, rows, strict=True)]
            low = min(counts)
            if low < self.cap:
                # Conservative update: raise only the counters at the minimum (less overestimate).
                for r, i, c in zip(self._rows, rows, counts, strict=True):
                    if c == low:
                        r[i] = low + 1
        self._since_reset += 1
        self.total += 1
        if self._since_reset >= self.period:
            self.reset()

    def estimate(self, key: str) -> int:
        """Requests seen recently (the counters, at most ``cap``, plus the doorkeeper bit)."""
        rows, d1, d2 = _indexes(key, self.width, self.depth)
        low = min(r[i] for r, i in zip(self._rows, rows, strict=True))
        return low + (1 if self._door[d1] and self._door[d2] else 0)

    def estimates(self, keys: list[str]) -> np.ndarray:
        """:meth:`estimate` of many keys at once (float64), vectorised over the rows."""
        if not keys:
            return np.zeros(0)
        idx = [_indexes(k, self.width, self.depth) for k in keys]
        rows = np.array([i[0] for i in idx], dtype=np.int64)
        low = np.min(np.stack([np.frombuffer(r, dtype=np.uint8)[rows[:, j]] for j, r in enumerate(self._rows)]), axis=0)
        door = np.frombuffer(self._door, dtype=np.uint8)
        d1 = np.array([i[1] for i in idx], dtype=np.int64)
        d2 = np.array([i[2] for i in idx], dtype=np.int64)
        return low.astype(np.float64) + ((door[d1] & door[d2]) > 0)

    def reset(self) -> None:
        """Halves every counter and clears the doorkeeper (aging)."""
        for r in self._rows:
            a = np.frombuffer(r, dtype=np.uint8)
            np.right_shift(a, 1, out=a)
        self._door[:] = bytes(self.width)
        self._since_reset = 0
        self.resets += 1
        self.total /= 2
