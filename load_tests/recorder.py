"""What a run observed: latency (HDR histogram), throughput per second, errors by code, the trace.

Latency is recorded in microseconds from the *intended* send time (open loop), so a
stalled server shows up as latency rather than as fewer requests (no coordinated omission).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

_MAX_US = 600 * 1_000_000  # ten minutes: anything slower is clamped, not dropped
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class Recorder:
    """One histogram per run phase; ``t`` values are seconds since the run's start."""

    name: str
    keep_trace: bool = False
    hist: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, _MAX_US, 3))
    #: From the actual send (what a closed-loop client would see): the gap to ``hist`` is
    #: queueing in the generator, reported so it is never mistaken for the server.
    service: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, _MAX_US, 3))
    ok_per_s: Counter[int] = field(default_factory=Counter)
    err_per_s: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    trace: list[tuple[float, str]] = field(default_factory=list)
    first_t: float | None = None
    last_t: float = 0.0
    #: Seconds the drivers ran for this recorder; when several phases (rounds) feed one
    #: recorder, rates use this rather than first-to-last.
    active_s: float = 0.0

    def sent(self, t: float, model: str) -> None:
        if self.keep_trace:
            self.trace.append((t, model))

    def done(self, t_intended: float, t_done: float, code: str, t_sent: float | None = None) -> None:
        self.codes[code] += 1
        sec = int(t_done)
        if code == "OK":
            self.hist.record_value(min(max(1, int((t_done - t_intended) * 1e6)), _MAX_US))
            t_sent = t_intended if t_sent is None else t_sent
            self.service.record_value(min(max(1, int((t_done - t_sent) * 1e6)), _MAX_US))
            self.ok_per_s[sec] += 1
        else:
            self.err_per_s[sec] += 1
        if self.first_t is None or t_intended < self.first_t:
            self.first_t = t_intended
        self.last_t = max(self.last_t, t_done)

    @property
    def ok(self) -> int:
        return self.codes.get("OK", 0)

    def pct_ms(self, p: float) -> float:
        return round(self.hist.get_value_at_percentile(p) / 1000, 3) if self.ok else 0.0

    def summary(self) -> dict[str, Any]:
        span = self.active_s or (self.last_t - (self.first_t or 0.0))
        total = sum(self.codes.values())
        return {
            "requests": total, "ok": self.ok, "errors": total - self.ok,
            "errors_by_code": {c: n for c, n in sorted(self.codes.items()) if c != "OK"},
            "duration_s": round(span, 3),
            "ok_per_s": round(self.ok / span, 1) if span > 0 else 0.0,
            "latency_ms": {f"p{p:g}": self.pct_ms(p) for p in PERCENTILES}
            | {"mean": round(self.hist.get_mean_value() / 1000, 3) if self.ok else 0.0,
               "max": round(self.hist.get_max_value() / 1000, 3) if self.ok else 0.0},
            "service_ms": {f"p{p:g}": round(self.service.get_value_at_percentile(p) / 1000, 3) if self.ok else 0.0
                           for p in PERCENTILES},
        }

    def cdf(self, points: int = 200) -> list[tuple[float, float]]:
        """(latency ms, fraction at or below) pairs for plotting, log-spaced in the tail."""
        if not self.ok:
            return []
        out = []
        for i in range(points + 1):
            q = 100.0 * (1 - 10 ** (-4 * i / points))  # 0 .. 99.99
            out.append((self.hist.get_value_at_percentile(q) / 1000, q / 100))
        return out

    def timeline(self) -> list[dict[str, int]]:
        if not self.ok_per_s and not self.err_per_s:
            return []
        lo = min([*self.ok_per_s, *self.err_per_s])
        hi = max([*self.ok_per_s, *self.err_per_s])
        return [{"t": s, "ok": self.ok_per_s.get(s, 0), "errors": self.err_per_s.get(s, 0)} for s in range(lo, hi + 1)]
