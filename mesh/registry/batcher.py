"""Group commit for registry creates: concurrent creates share one etcd transaction.

A create that finds no batch in flight is sent at once (no added latency when the
registry is quiet); creates that arrive while a batch is in flight wait for it and
go together in the next one (up to ``max_batch`` each). A fleet of registrations
thus costs a few transactions, not one per model, while each caller still gets its
own outcome (created at revision R, or the key existed).
"""

from __future__ import annotations

import asyncio

from mesh.registry.store import KVStore

#: Creates per transaction (etcd refuses transactions of more than 128 operations by default).
MAX_BATCH = 64

_Item = tuple[bytes, bytes, "asyncio.Future[int | None]"]


class CreateBatcher:
    def __init__(self, store: KVStore, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._max = max_batch
        self._queue: list[_Item] = []
        self._flusher: asyncio.Task[None] | None = None

    async def create(self, key: bytes, value: bytes) -> int | None:
        """The revision the key was created at, or None if it already existed."""
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._queue.append((key, value, fut))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="registry-create-batch")
        # Not shielded: a caller that goes away cancels only its own future; the
        # batch (already queued) is still written and skips a done future.
        return await fut

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._next_batch()
                try:
                    revisions = await self._store.create_many([(k, v) for k, v, _ in batch])
                except Exception as e:  # the registry is unreachable: every caller in the batch hears it
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                except BaseException:
                    for _, _, fut in batch:
                        fut.cancel()
                    raise
                for (_, _, fut), rev in zip(batch, revisions):
                    if not fut.done():
                        fut.set_result(rev)
        finally:
            self._flusher = None
            queued, self._queue = self._queue, []  # left only when this task was cancelled
            for _, _, fut in queued:
                fut.cancel()

    def _next_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        rest: list[_Item] = []
        keys: set[bytes] = set()
        for item in self._queue:
            # One key once per transaction (etcd refuses duplicates): a repeat goes in the next one.
            if len(batch) < self._max and item[0] not in keys:
                batch.append(item)
                keys.add(item[0])
            else:
                rest.append(item)
        self._queue = rest
        return batch
