"""KVStore in one process's memory, with etcd's semantics.

For unit tests and one-process use (``meshserve up`` still uses a real etcd).
Keeps the whole event history so watches can start at any revision; leases
expire on the injected clock, checked on every call and by ``expire_leases``.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mesh.clock import Clock, SystemClock
from mesh.registry.store import KeyValue, LeaseLost, Page, WatchEvent


@dataclass
class _Lease:
    ttl: int
    expires_at: float
    keys: set[bytes]


class MemoryStore:
    description = "in-memory registry"

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._data: dict[bytes, KeyValue] = {}
        self._sorted: list[bytes] = []
        self._rev = 1
        self._history: list[WatchEvent] = []
        self._watchers: list[tuple[bytes, asyncio.Queue[WatchEvent]]] = []
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 0x1000
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.expire_leases()

    # -- internals ---------------------------------------------------------

    def expire_leases(self) -> None:
        now = self._clock.monotonic()
        for lease_id in [i for i, le in self._leases.items() if le.expires_at <= now]:
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease:
            for key in sorted(lease.keys):
                self._remove(key)

    def _emit(self, ev: WatchEvent) -> None:
        self._history.append(ev)
        for prefix, queue in self._watchers:
            if ev.key.startswith(prefix):
                queue.put_nowait(ev)

    def _write(self, key: bytes, value: bytes, lease: int) -> int:
        if lease and lease not in self._leases:
            raise LeaseLost(f"lease {lease:x} does not exist (expired or revoked)")
        self._rev += 1
        old = self._data.get(key)
        if old is None:
            bisect.insort(self._sorted, key)
        elif old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        create = old.create_revision if old else self._rev
        self._data[key] = KeyValue(key, value, self._rev, create, lease)
        if lease:
            self._leases[lease].keys.add(key)
        self._emit(WatchEvent("put", key, value, self._rev))
        return self._rev

    def _remove(self, key: bytes) -> bool:
        old = self._data.pop(key, None)
        if old is None:
            return False
        self._sorted.pop(bisect.bisect_left(self._sorted, key))
        if old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        self._rev += 1
        self._emit(WatchEvent("delete", key, b"", self._rev))
        return True

    def _mod(self, key: bytes) -> int:
        kv = self._data.get(key)
        return kv.mod_revision if kv else 0

    # -- KVStore -----------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        self.expire_leases()
        return self._data.get(key)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        self.expire_leases()
        return self._write(key, value, lease)

    async def put_if(self, key: bytes, value: bytes, *, mod_revision: int, lease: int = 0,
                     prefix_unchanged: tuple[bytes, int] | None = None) -> int | None:
        self.expire_leases()
        if self._mod(key) != mod_revision:
            return None
        if prefix_unchanged is not None:
            prefix, rev = prefix_unchanged
            if any(kv.mod_revision > rev for k, kv in self._data.items() if k.startswith(prefix)):
                return None
        return self._write(key, value, lease)

    async def create_many(self, items: list[tuple[bytes, bytes]]) -> list[int | None]:
        self.expire_leases()
        return [None if key in self._data else self._write(key, value, 0) for key, value in items]

    async def write_many(self, puts: list[tuple[bytes, bytes]], deletes: list[bytes], *, lease: int = 0) -> int:
        self.expire_leases()
        if lease and lease not in self._leases:
            raise LeaseLost(f"lease {lease:x} does not exist (expired or revoked)")
        for key, value in puts:
            self._write(key, value, lease)
        for key in deletes:
            self._remove(key)
        return self._rev

    async def delete(self, key: bytes) -> bool:
        self.expire_leases()
        return self._remove(key)

    async def delete_if(self, key: bytes, *, mod_revision: int) -> bool:
        self.expire_leases()
        if key not in self._data or self._mod(key) != mod_revision:
            return False
        return self._remove(key)

    async def delete_prefix(self, prefix: bytes) -> int:
        self.expire_leases()
        keys = [k for k in self._sorted[bisect.bisect_left(self._sorted, prefix):] if k.startswith(prefix)]
        count = 0
        for k in keys:
            count += self._remove(k)
        return count

    async def list(
        self, prefix: bytes, *, limit: int = 0, start_after: bytes | None = None, revision: int = 0
    ) -> Page:
        # Reads are always at the current revision; a paged scan that must be
        # consistent is too (nothing can interleave between awaits-free calls
        # in tests), so ``revision`` is accepted and ignored.
        self.expire_leases()
        start = start_after + b"\0" if start_after is not None else prefix
        i = bisect.bisect_left(self._sorted, start)
        items: list[KeyValue] = []
        more = False
        for key in self._sorted[i:]:
            if not key.startswith(prefix):
                break
            if limit and len(items) == limit:
                more = True
                break
            items.append(self._data[key])
        return Page(items, more, self._rev)

    async def revision(self) -> int:
        self.expire_leases()
        return self._rev

    async def grant_lease(self, ttl_s: int) -> int:
        self._next_lease += 1
        self._leases[self._next_lease] = _Lease(ttl_s, self._clock.monotonic() + ttl_s, set())
        return self._next_lease

    async def refresh_lease(self, lease_id: int) -> int:
        self.expire_leases()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseLost(f"lease {lease_id:x} expired or was revoked")
        lease.expires_at = self._clock.monotonic() + lease.ttl
        return lease.ttl

    async def revoke_lease(self, lease_id: int) -> None:
        self._drop_lease(lease_id)

    async def watch(self, prefix: bytes, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        # History replay and registration happen without an await in between,
        # so no event is missed or doubled.
        lo = bisect.bisect_left([e.revision for e in self._history], start_revision)
        for ev in self._history[lo:]:
            if ev.key.startswith(prefix):
                queue.put_nowait(ev)
        entry = (prefix, queue)
        self._watchers.append(entry)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(entry)
