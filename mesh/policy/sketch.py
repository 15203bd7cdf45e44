"""A bounded frequency estimate of every model a runtime was asked for.

TinyLFU's count-min sketch (Einziger, Friedman, Manes, 2017) much as Caffeine
runs it: ``depth`` rows of ``width`` byte counters saturating at ``cap``
(Caffeine: 15), one counter per row per key, conservative update; the estimate
is the row minimum. In front of it a *doorkeeper* (a Bloom
filter of ``8 x width`` bits, two per key, packed in ``width`` bytes so that a long
period's thousands of one-off keys rarely pass it by collision) absorbs each key's first occurrence per period, so
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
import struct
from itertools import repeat

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
    mask, bits = width - 1, 8 * width - 1
    # Kirsch-Mitzenmacher: row i uses h1 + i*h2; the doorkeeper two more bits (of 8 x width).
    return (tuple((h1 + i * h2) & mask for i in range(depth)), (h1 + depth * h2) & bits, (h1 + (depth + 1) * h2) & bits)


@functools.lru_cache(maxsize=1 << 16)
def _packed(key: str, width: int, depth: int) -> bytes:
    """:func:`_indexes` as ``depth + 2`` little-endian int64s, so many keys' slots
    become one array with a join and no per-key conversion."""
    rows, d1, d2 = _indexes(key, width, depth)
    return struct.pack(f"<{depth + 2}q", *rows, d1, d2)


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
        b1, m1, b2, m2 = d1 >> 3, 1 << (d1 & 7), d2 >> 3, 1 << (d2 & 7)
        if not (door[b1] & m1 and door[b2] & m2):
            door[b1] |= m1  # first sight this period: the doorkeeper only
            door[b2] |= m2
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
        door = self._door
        return low + (1 if door[d1 >> 3] >> (d1 & 7) & 1 and door[d2 >> 3] >> (d2 & 7) & 1 else 0)

    def estimates(self, keys: list[str]) -> np.ndarray:
        """:meth:`estimate` of many keys at once (float64), vectorised over the rows."""
        if not keys:
            return np.zeros(0)
        n, depth = len(keys), self.depth
        buf = b"".join(map(_packed, keys, repeat(self.width, n), repeat(depth, n)))
        idx = np.frombuffer(buf, dtype="<i8").reshape(n, depth + 2)
        low = np.frombuffer(self._rows[0], dtype=np.uint8)[idx[:, 0]]
        for j in range(1, depth):
            low = np.minimum(low, np.frombuffer(self._rows[j], dtype=np.uint8)[idx[:, j]])
        door = np.frombuffer(self._door, dtype=np.uint8)
        d1, d2 = idx[:, depth], idx[:, depth + 1]
        seen = (door[d1 >> 3] >> (d1 & 7)) & (door[d2 >> 3] >> (d2 & 7)) & 1
        return low.astype(np.float64) + seen

    def reset(self) -> None:
        """Halves every counter and clears the doorkeeper (aging)."""
        for r in self._rows:
            a = np.frombuffer(r, dtype=np.uint8)
            np.right_shift(a, 1, out=a)
        self._door[:] = bytes(self.width)
        self._since_reset = 0
        self.resets += 1
        self.total /= 2
