"""Open-loop (Poisson) and closed-loop (K callers) drivers over any async ``Send``.

Open loop: arrival times are drawn up front (seeded exponential gaps); each request's
latency runs from its intended send time, so a slow server cannot slow the arrivals
down and hide its own latency (coordinated omission). The generator's own lag (actual
minus intended send) is reported so a saturated client is visible, not mistaken for
the server. Both drivers stop by themselves at their deadline.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np

from load_tests.recorder import Recorder

INFER = "/inference.GRPCInferenceService/ModelInfer"
#: Sends one request for (model id, serialised request); raises AioRpcError on failure.
Send = Callable[[str, bytes], Awaitable[Any]]


def grpc_sender(channel: grpc.aio.Channel, timeout_s: float = 60.0, *, header: bool = False) -> Send:
    """``header``: name the model in ``mm-model-id`` too (else only in the body, tritonclient's default)."""
    call = channel.unary_unary(INFER)  # bytes in, bytes out: no client-side (de)serialisation cost

    async def send(model: str, payload: bytes) -> Any:
        if header:
            return await call(payload, timeout=timeout_s, metadata=(("mm-model-id", model),))
        return await call(payload, timeout=timeout_s)

    return send


def code_of(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return str(exc.code().name)
    if isinstance(exc, asyncio.TimeoutError):
        return "DEADLINE_EXCEEDED"
    return type(exc).__name__


async def _sleep_until(t: float) -> None:
    """The event loop's timers wake up to ~1 ms late (epoll's millisecond timeout); that lag
    would be charged to every request, so the last stretch yields instead of sleeping."""
    while (d := t - time.perf_counter()) > 0:
        await asyncio.sleep(d - 0.0015 if d > 0.002 else 0)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerfdPacer:
    """Wakes the event loop at each arrival through a Linux timerfd: microsecond wake-ups with
    neither a spin nor a thread. The spinning default busy-waits ~2 ms per arrival (at 300
    req/s about 0.3 ms of client CPU per request, and a core held in the meantime: the
    processes under test then share the other core); a helper thread's ``time.sleep``
    woke the loop ~1.2 ms late through the GIL (gateway-tuning, BENCHMARKS.md)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd = fd

    async def __call__(self, t: float) -> None:
        d = t - time.perf_counter()
        if d <= 0:
            return
        ns = max(1000, int(d * 1e9))
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
        if self._libc.timerfd_settime(self._fd, 0, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[None] = loop.create_future()
        def wake() -> None:
            if not fired.done():
                fired.set_result(None)

        loop.add_reader(self._fd, wake)
        try:
            await fired
        finally:
            loop.remove_reader(self._fd)
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self._fd)


async def timed_call(send: Send, model: str, payload: bytes, t_intended: float, t0: float, rec: Recorder) -> None:
    t_sent = time.perf_counter()
    try:
        await send(model, payload)
        code = "OK"
    except Exception as e:  # every failure is a result to count, never a crash of the run
        code = code_of(e)
    rec.done(t_intended - t0, time.perf_counter() - t0, code, t_sent - t0)


async def open_loop(send: Send, models: Sequence[str], payloads: dict[str, bytes], rate: float, duration_s: float,
                    rec: Recorder, *, seed: int = 0, t0: float | None = None, max_inflight: int = 2000,
                    stop: asyncio.Event | None = None,
                    pacer: Callable[[float], Awaitable[None]] = _sleep_until) -> dict[str, float]:
    """Poisson arrivals at ``rate``/s for ``duration_s``; ``models`` is the pre-drawn model sequence
    (cycled). ``pacer`` waits until an arrival time (default: sleep, then spin the last 2 ms).
    Returns the generator's lag statistics."""
    rng = np.random.default_rng(seed)
    n = max(1, int(rate * duration_s * 1.2) + 10)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    arrivals = arrivals[arrivals < duration_s]
    t0 = time.perf_counter() if t0 is None else t0
    start = time.perf_counter()
    inflight: set[asyncio.Task[None]] = set()
    lags = []
    for i, at in enumerate(arrivals):
        if stop is not None and stop.is_set():
            break
        intended = start + float(at)
        await pacer(intended)
        now = time.perf_counter()
        lags.append(now - intended)
        model = models[i % len(models)]
        if len(inflight) >= max_inflight:  # protect the machine; counted, not hidden
            rec.done(intended - t0, now - t0, "CLIENT_BACKLOG")
            continue
        rec.sent(now - t0, model)
        task = asyncio.create_task(timed_call(send, model, payloads[model], intended, t0, rec))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    if inflight:
        await asyncio.gather(*inflight)
    rec.active_s += time.perf_counter() - start
    lag = np.asarray(lags or [0.0])
    return {"intended_requests": int(len(arrivals)), "lag_p50_ms": round(float(np.percentile(lag, 50)) * 1e3, 3),
            "lag_p99_ms": round(float(np.percentile(lag, 99)) * 1e3, 3), "lag_max_ms": round(float(lag.max()) * 1e3, 3)}


async def closed_loop(send: Send, models: Sequence[str], payloads: dict[str, bytes], callers: int,
                      duration_s: float, rec: Recorder, *, t0: float | None = None) -> None:
    """``callers`` loops, each sending its next request when the last one answered."""
    t0 = time.perf_counter() if t0 is None else t0
    stop_at = time.perf_counter() + duration_s
    counter = iter(range(1 << 62))

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            model = models[next(counter) % len(models)]
            t = time.perf_counter()
            rec.sent(t - t0, model)
            await timed_call(send, model, payloads[model], t, t0, rec)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(callers):
            tg.create_task(caller())
    rec.active_s += time.perf_counter() - start
