"""Injected time: everything with a TTL, a backoff or an LRU age takes a Clock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for durations and deadlines."""
        ...

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the epoch, for records."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start_s: float = 1_000.0, wall_ms: int = 1_700_000_000_000) -> None:
        self._t = start_s
        self._wall0 = wall_ms
        self._t0 = start_s

    def monotonic(self) -> float:
        return self._t

    def now_ms(self) -> int:
        return self._wall0 + int((self._t - self._t0) * 1000)

    def advance(self, seconds: float) -> None:
        self._t += seconds
