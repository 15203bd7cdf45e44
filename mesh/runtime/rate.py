"""A request rate over the last minute, on the injected clock."""

from __future__ import annotations

from mesh.clock import Clock


class RequestRate:
    """Requests over the last minute, in 10-second buckets (for ``requests_per_min``)."""

    BUCKET_S = 10.0

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._buckets: dict[int, int] = {}

    def add(self) -> None:
        b = int(self._clock.monotonic() // self.BUCKET_S)
        self._buckets[b] = self._buckets.get(b, 0) + 1
        if len(self._buckets) > 8:
            for old in [k for k in self._buckets if k <= b - 6]:
                del self._buckets[old]

    def per_minute(self) -> int:
        b = int(self._clock.monotonic() // self.BUCKET_S)
        return sum(n for k, n in self._buckets.items() if b - 6 < k <= b)
