"""Where a request's inference runs: inline on the event loop, or in the inference pool.

Handing a 5 µs ONNX run to a thread costs more than the run (a future, a
cross-thread wake-up, the GIL changing hands twice), so a model whose runs are
measured to be tiny runs inline. Each loaded model keeps a moving estimate of
its run time (every run is timed, wherever it ran); a model runs inline only once
``WARM_RUNS`` runs have been measured, while the estimate stays under the
threshold, and only for requests no larger than the ones behind the estimate. A
slow model therefore never runs inline: its first runs go to the pool and its
estimate never drops below the threshold; an inline run that turns out slow
raises the estimate past the threshold and sends the next requests back to the pool.
"""

from __future__ import annotations

#: Runs measured in the pool before a model may run inline (a slow first run keeps it there).
WARM_RUNS = 1
#: Weight of the newest run in the moving estimates.
ALPHA = 0.2
#: Requests up to this many times the typical input bytes may run inline.
SIZE_SLACK = 2.0


class RunEstimate:
    """One loaded model's moving estimate of an inference's run time and input size."""

    __slots__ = ("seconds", "input_bytes", "runs")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.input_bytes = 0.0
        self.runs = 0

    def observe(self, seconds: float, input_bytes: int) -> None:
        if self.runs == 0:
            self.seconds, self.input_bytes = seconds, float(input_bytes)
        else:
            self.seconds += ALPHA * (seconds - self.seconds)
            self.input_bytes += ALPHA * (input_bytes - self.input_bytes)
        self.runs += 1

    def inline(self, threshold_s: float, input_bytes: int) -> bool:
        """True when a request of ``input_bytes`` should run on the event loop."""
        return (threshold_s > 0 and self.runs >= WARM_RUNS and self.seconds < threshold_s
                and input_bytes <= SIZE_SLACK * self.input_bytes + 64)
