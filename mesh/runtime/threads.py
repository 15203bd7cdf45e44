"""The threads framework work runs in: loads, unloads, and cancelled loads still running.

A framework call (session creation, ``torch.jit.load``, dropping a session) cannot
be interrupted, so a cancelled load waits for its thread and then drops what it
made; if that wait is cancelled too, the drop still runs when the thread ends and
``settle`` waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


class FrameworkThreads:
    def __init__(self, load_threads: int, unload_threads: int = 2) -> None:
        self.load_pool = ThreadPoolExecutor(load_threads, thread_name_prefix="load")
        # Unloads get their own threads: a load hung in its framework must not hold up evictions.
        self.unload_pool = ThreadPoolExecutor(unload_threads, thread_name_prefix="unload")
        #: Threads of cancelled loads still running (their model is dropped when they end).
        self._orphans: set[Future[Any]] = set()

    async def run(self, fn: Callable[[], Any], cleanup: Callable[[Any], None] | None = None,
                  pool: ThreadPoolExecutor | None = None) -> Any:
        """Runs ``fn`` in ``pool`` (the load pool by default). If cancelled meanwhile,
        waits for the thread and runs ``cleanup(result)`` on what it produced before
        re-raising the cancellation."""
        fut = (pool or self.load_pool).submit(fn)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            if cleanup is not None:
                cleaned: Future[None] = Future()
                self._orphans.add(cleaned)

                def drop(f: Future[Any]) -> None:
                    try:
                        if not f.cancelled() and f.exception() is None:
                            cleanup(f.result())
                    except Exception:  # noqa: BLE001 - runs in a pool thread; log and go on
                        log.exception("dropping a cancelled load's model failed")
                    finally:
                        self._orphans.discard(cleaned)
                        cleaned.set_result(None)

                fut.add_done_callback(drop)
                try:
                    await asyncio.shield(asyncio.wrap_future(cleaned))
                except asyncio.CancelledError:
                    pass
            raise

    async def settle(self, timeout_s: float) -> None:
        """Waits (bounded) for the threads of cancelled loads to finish and drop their models."""
        pending = [asyncio.wrap_future(f) for f in list(self._orphans)]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    def close(self) -> None:
        self.load_pool.shutdown(wait=False, cancel_futures=True)
        self.unload_pool.shutdown(wait=False, cancel_futures=True)
