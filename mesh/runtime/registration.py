"""The runtime in the registry: its instance record and one copy key per model.

Both live under one etcd lease (``LeaseKeeper``), so a runtime that dies leaves
nothing once the lease expires; the record carries ``lease_id`` because routers
claim copy keys under the instance's lease. Writes go through two owned loops:

- the instance record, rewritten at most once per ``record_interval_s`` while
  something changes (coalesced: a burst of loads is one write);
- copy keys, one writer for all models so writes for one model never reorder:
  LOADING when a load starts (overwriting what a router may have claimed),
  LOADED with the size when done, deleted on unload, eviction or failure. The
  LOADING write waits ``LOADING_WRITE_DELAY_S``: a load that ends sooner (most do,
  from the disk cache) writes only its outcome, and the router's claim (a
  LOADING key under this instance's lease) stands for it meanwhile.
  ``flush_copy`` lets loadModel return only once its LOADED key is written.

An etcd outage alone loses nothing: the lease keeper retries until etcd answers,
and a restarted etcd still holds the lease. Only when etcd says the lease is gone
(a partition longer than the TTL) does it re-register: a new lease, then the
instance record and every copy key it holds in one transaction (batches past
etcd's operation limit), never a reload: the models stayed loaded and serving.
On start it deletes copy keys a previous process with the same instance id left
behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mesh.clock import Clock
from mesh.errors import MeshError
from mesh.registry import records as rec
from mesh.registry.lease import LeaseKeeper
from mesh.registry.registry import Registry

log = logging.getLogger(__name__)

#: The record is re-checked this often even without changes (and written if it differs).
RECORD_REFRESH_S = 10.0
#: A LOADING copy key is written only for a load still running after this long.
LOADING_WRITE_DELAY_S = 0.2
#: Copy keys written in one transaction at most (etcd allows 128 operations in one).
COPY_BATCH = 64


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    used_bytes: int
    model_count: int
    oldest_lru_ms: int
    loads_in_progress: int
    requests_per_min: int = 0


class Registration:
    def __init__(
        self,
        registry: Registry,
        record: rec.InstanceRecord,
        stats: Callable[[], RuntimeStats],
        *,
        lease_ttl_s: int,
        clock: Clock,
        record_interval_s: float = 1.0,
    ) -> None:
        self._registry = registry
        self._base = record
        self._stats = stats
        self._ttl = lease_ttl_s
        self._clock = clock
        self._interval = record_interval_s
        self.instance_id = record.instance_id
        self._keeper: LeaseKeeper | None = None
        self._lease_lost = asyncio.Event()
        self._record_dirty = asyncio.Event()
        self._copies_dirty = asyncio.Event()
        self._desired: dict[str, rec.CopyRecord | None] = {}
        self._pending: set[str] = set()
        #: Models whose LOADING write waited its delay and is now due.
        self._loading_due: set[str] = set()
        self._seq = 0
        self._desired_seq: dict[str, int] = {}
        self._written_seq: dict[str, int] = {}
        self._written = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.shutting_down = False
        self._last_written: rec.InstanceRecord | None = None
        self._put_lock = asyncio.Lock()
        #: Copy-key writes and a re-registration's snapshot never interleave (a snapshot
        #: written after a newer copy write would undo it).
        self._copy_lock = asyncio.Lock()

    @property
    def lease_id(self) -> int:
        return self._keeper.lease_id if self._keeper else 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Cleans up a predecessor's copy keys, registers, starts the loops."""
        removed = await self._delete_leftover_copies()
        if removed:
            log.info("deleted %d copy keys a previous runtime %s left behind", removed, self.instance_id)
        await self._register()
        loop = asyncio.get_running_loop()
        for name, coro in (("record", self._record_loop()), ("copies", self._copy_loop()),
                           ("lease", self._lease_loop())):
            self._tasks.append(loop.create_task(coro, name=f"registration-{name}"))

    async def stop(self, *, revoke: bool = True) -> None:
        """Stops the loops and revokes the lease: the record and every copy key vanish.

        ``revoke=False`` leaves the keys to expire with the lease (what a crash does).
        """
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._keeper is not None:
            await self._keeper.stop(revoke=revoke)

    async def mark_shutting_down(self) -> None:
        """Writes ``shutting_down`` at once, so placement stops choosing this runtime."""
        self.shutting_down = True
        try:
            await self._put_record()
        except MeshError as e:
            log.warning("could not mark instance %s shutting down: %s", self.instance_id, e)

    # -- LoadListener --------------------------------------------------------

    def loading(self, model_id: str) -> None:
        self._set_copy(model_id, rec.CopyRecord(model_id, self.instance_id, rec.LOADING, self._clock.now_ms()))

    def loaded(self, model_id: str, size_bytes: int) -> None:
        self._set_copy(model_id, rec.CopyRecord(model_id, self.instance_id, rec.LOADED, self._clock.now_ms(),
                                                size_bytes))

    def removed(self, model_id: str) -> None:
        self._set_copy(model_id, None)

    def changed(self) -> None:
        self._record_dirty.set()

    async def flush_copy(self, model_id: str, timeout_s: float) -> bool:
        """Waits until the latest state of ``model_id``'s copy key is in etcd (a LOADING
        write still in its delay is written now)."""
        target = self._desired_seq.get(model_id, 0)
        copy = self._desired.get(model_id)
        if copy is not None and copy.state == rec.LOADING and model_id not in self._loading_due:
            self._loading_due.add(model_id)
            self._pending.add(model_id)
            self._copies_dirty.set()

        def written() -> bool:
            return model_id not in self._desired_seq or self._written_seq.get(model_id, 0) >= target

        async with self._written:
            try:
                await asyncio.wait_for(self._written.wait_for(written), timeout_s)
                return True
            except TimeoutError:
                return False

    # -- internals ---------------------------------------------------------

    def _set_copy(self, model_id: str, copy: rec.CopyRecord | None) -> None:
        self._seq += 1
        self._desired[model_id] = copy
        self._desired_seq[model_id] = self._seq
        self._pending.add(model_id)
        self._copies_dirty.set()
        self._record_dirty.set()

    def record(self) -> rec.InstanceRecord:
        s = self._stats()
        return dataclasses.replace(
            self._base, lease_id=self.lease_id, used_bytes=s.used_bytes, model_count=s.model_count,
            oldest_lru_ms=s.oldest_lru_ms, loads_in_progress=s.loads_in_progress,
            requests_per_min=s.requests_per_min, shutting_down=self.shutting_down,
        )

    async def _put_record(self, *, only_if_changed: bool = False) -> None:
        # One writer at a time, each computing the record inside the lock: a slow
        # periodic write can never land after (and undo) the shutting-down one.
        async with self._put_lock:
            record = self.record()
            if only_if_changed and record == self._last_written:
                return  # most requests change nothing a router reads
            await self._registry.put_instance(record, lease=self.lease_id)
            self._last_written = record

    async def _register(self) -> None:
        self._lease_lost.clear()
        keeper = LeaseKeeper(self._registry.store, self._ttl, clock=self._clock,
                             on_lost=lambda _reason: self._lease_lost.set())
        await keeper.start()
        self._keeper = keeper
        await self._put_record()

    async def _delete_leftover_copies(self) -> int:
        keys = self._registry.keys
        store = self._registry.store
        removed, after = 0, None
        while True:
            page = await store.list(keys.copies, limit=500, start_after=after)
            for kv in page.items:
                parsed = keys.parse(kv.key)
                if parsed is not None and parsed.instance_id == self.instance_id:
                    removed += int(await store.delete(kv.key))
            if not page.more or not page.items:
                return removed
            after = page.items[-1].key

    async def _record_loop(self) -> None:
        while True:
            try:
                # Also wake now and then: requests_per_min decays with no event.
                # asyncio.timeout, not wait_for: on 3.11 a wait_for cancelled in this
                # loop could stall in "cancelling" and hang shutdown (SIGTERM ignored).
                async with asyncio.timeout(RECORD_REFRESH_S):
                    await self._record_dirty.wait()
            except TimeoutError:
                pass
            self._record_dirty.clear()
            try:
                await self._put_record(only_if_changed=True)
            except MeshError as e:
                log.warning("instance record update failed (will retry): %s", e)
                self._record_dirty.set()
            await asyncio.sleep(self._interval)

    async def _copy_loop(self) -> None:
        delay = 0.1
        while True:
            await self._copies_dirty.wait()
            self._copies_dirty.clear()
            while self._pending:
                batch = self._next_copy_batch()
                if not batch:
                    continue
                puts = [c for c, _ in batch.values() if c is not None]
                deletes = [m for m, (c, _) in batch.items() if c is None]
                try:
                    # Every pending key in one transaction: a load's LOADED and its
                    # victims' deletes are one etcd round trip (and one revision).
                    async with self._copy_lock:
                        await self._registry.write_copies(puts, deletes, self.instance_id, lease=self.lease_id)
                except MeshError as e:
                    log.warning("copy keys for %s not written (will retry): %s", ", ".join(map(repr, batch)), e)
                    self._pending.update(batch)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                delay = 0.1
                async with self._written:
                    for model_id, (copy, seq) in batch.items():
                        self._written_seq[model_id] = seq
                        if copy is None and self._desired_seq.get(model_id) == seq:
                            # Deleted and nothing newer: forget the model entirely.
                            del self._desired[model_id], self._desired_seq[model_id], self._written_seq[model_id]
                    self._written.notify_all()

    def _next_copy_batch(self) -> dict[str, tuple[rec.CopyRecord | None, int]]:
        """Takes up to COPY_BATCH pending models (model -> (desired copy, its seq)); a
        LOADING write still in its delay is set aside until the delay ends."""
        batch: dict[str, tuple[rec.CopyRecord | None, int]] = {}
        while self._pending and len(batch) < COPY_BATCH:
            model_id = self._pending.pop()
            copy, seq = self._desired.get(model_id), self._desired_seq.get(model_id, 0)
            if copy is not None and copy.state == rec.LOADING and model_id not in self._loading_due:
                asyncio.get_running_loop().call_later(LOADING_WRITE_DELAY_S, self._loading_write_due, model_id, seq)
                continue
            self._loading_due.discard(model_id)
            batch[model_id] = (copy, seq)
        return batch

    def _loading_write_due(self, model_id: str, seq: int) -> None:
        """The delay of a LOADING write is over: written now if nothing newer came."""
        if self._desired_seq.get(model_id) == seq:
            self._loading_due.add(model_id)
            self._pending.add(model_id)
            self._copies_dirty.set()

    async def _lease_loop(self) -> None:
        while True:
            await self._lease_lost.wait()
            old = self.lease_id
            delay = 0.2
            while True:
                try:
                    if self._keeper is not None:
                        await self._keeper.stop(revoke=False)
                    restored = await self._reregister()
                    break
                except MeshError as e:
                    log.warning("re-registering after losing lease %x failed (will retry): %s", old, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            log.warning("lease %x was lost; re-registered as %s under lease %x with its %d copies",
                        old, self.instance_id, self.lease_id, restored)

    async def _reregister(self) -> int:
        """A new lease; the record and every copy key held, in one transaction. Returns
        how many copy keys were written."""
        self._lease_lost.clear()
        keeper = LeaseKeeper(self._registry.store, self._ttl, clock=self._clock,
                             on_lost=lambda _reason: self._lease_lost.set())
        await keeper.start()
        self._keeper = keeper
        async with self._copy_lock, self._put_lock:
            held = {m: (c, self._desired_seq[m]) for m, c in self._desired.items() if c is not None}
            record = self.record()
            await self._registry.restore_instance(record, [c for c, _ in held.values()], lease=keeper.lease_id)
            self._last_written = record
        async with self._written:
            for model_id, (_, seq) in held.items():
                if self._written_seq.get(model_id, 0) < seq:
                    self._written_seq[model_id] = seq
            self._written.notify_all()
        return len(held)
