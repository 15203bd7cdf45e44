"""An in-memory copy of the registry, fed by one prefix watch.

Routers and the admin API read it instead of etcd (never an etcd read on the
inference path). ``start`` pages through every key at one revision, then watches
from the next; a compacted watch triggers a full reload, after which listeners
hear of every key that changed in the gap. A corrupt value is
logged and treated as absent, never a crash. ``wait_for`` gives read-your-writes:
after a write at revision R, wait until the mirror has applied R.

Two cheaper halves of the same guarantee, for the registration path: the writer
applies its own committed write at once (``apply_local``: the record and its
revision; the watch's copy of that write is then skipped, undecoded, and any older
event for the key too), and a reader that misses an id reads its keys from the
registry first (``refresh``: a strong read, applied the same way), so a model
registered through any router is seen by every router from the moment the
registration returns.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

from mesh.errors import CorruptRecord, DeadlineExceeded, RegistryUnavailable, Unavailable
from mesh.registry import records as rec
from mesh.registry.keys import KeySchema, ParsedKey
from mesh.registry.store import KeyValue, KVStore, WatchCompacted, WatchEvent

log = logging.getLogger(__name__)

Listener = Callable[[ParsedKey, Any], None]

_DECODERS: dict[str, type[Any]] = {
    "model": rec.ModelRecord,
    "vmodel": rec.VModelRecord,
    "instance": rec.InstanceRecord,
    "copy": rec.CopyRecord,
    "policy": rec.PolicyRecord,
    "resource": rec.ResourceRecord,
}


class RegistryMirror:
    def __init__(self, store: KVStore, keys: KeySchema, *, page_size: int = 2000) -> None:
        self._store = store
        #: The key schema (readers build the keys they ``refresh``).
        self.keys = keys
        self._page_size = page_size
        self.models: dict[str, rec.ModelRecord] = {}
        self.vmodels: dict[str, rec.VModelRecord] = {}
        self.instances: dict[str, rec.InstanceRecord] = {}
        #: model id -> instance id -> copy
        self.copies: dict[str, dict[str, rec.CopyRecord]] = {}
        #: Instances an operator drained (MeshAdmin DrainInstance): no new loads there.
        self.drains: set[str] = set()
        self.policy: rec.PolicyRecord | None = None
        self.policy_revision = 0
        #: KServe resources: (kind, name) -> record.
        self.resources: dict[tuple[str, str], rec.ResourceRecord] = {}
        #: Highest store revision applied.
        self.revision = 0
        self.corrupt_records = 0
        self._listeners: list[Listener] = []
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        #: Writes applied by ``apply_local`` the watch has not delivered yet:
        #: key -> (revision, parsed key, record).
        self._local: dict[bytes, tuple[int, ParsedKey, Any]] = {}

    def subscribe(self, listener: Listener) -> None:
        """``listener(parsed_key, record_or_None)`` runs after each applied change."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Returns once the full registry is loaded and the watch is running."""
        await self._load()
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="registry-mirror")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def wait_for(self, revision: int, timeout_s: float = 5.0) -> None:
        """Waits until every change up to ``revision`` is applied."""
        if self.revision >= revision:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        # A heap by revision and a timer handle, not asyncio.wait_for (a task per call):
        # a fleet of registrations waits here 64 at a time.
        heapq.heappush(self._waiters, (revision, next(self._waiter_seq), fut))

        def expire() -> None:
            if not fut.done():
                fut.set_exception(DeadlineExceeded(
                    f"the registry mirror did not reach revision {revision} within {timeout_s}s "
                    f"(at {self.revision}); {self._store.description} may be slow"))

        timer = loop.call_later(timeout_s, expire)
        try:
            await fut
        finally:
            timer.cancel()

    def apply_local(self, key: bytes, record: Any, revision: int) -> None:
        """Applies this process's own write, committed at ``revision``, without waiting
        for the watch. The mirror's ``revision`` does not move (earlier writes of other
        keys may still be on their way); the watch's events for ``key`` up to
        ``revision`` are skipped when they come."""
        parsed = self.keys.parse(key)
        if parsed is None or parsed.kind in ("leader", "drain"):
            return
        applied = self._local.get(key)
        if revision <= self.revision or (applied is not None and applied[0] >= revision):
            return  # the mirror already holds this write or a later one
        self._local[key] = (revision, parsed, record)
        self._store_record(parsed, record, revision)
        self._notify(parsed, record)

    async def refresh(self, *keys: bytes) -> None:
        """Reads ``keys`` from the registry and applies what exists (``apply_local`` at
        each key's mod revision): a strong read for an id the mirror lacks, so a write
        another router committed a moment ago is seen before the watch brings it."""
        try:
            kvs = await asyncio.gather(*(self._store.get(k) for k in keys))
        except RegistryUnavailable:
            return  # etcd unreachable: the mirror's own answer stands (as before the read)
        for key, kv in zip(keys, kvs):
            parsed = self.keys.parse(key)
            if kv is None or parsed is None or parsed.kind not in _DECODERS:
                continue
            try:
                record = rec.decode(_DECODERS[parsed.kind], kv.value)
            except CorruptRecord:
                continue  # the watch logs and counts it
            self.apply_local(key, record, kv.mod_revision)

    # -- loading and following -------------------------------------------

    async def _load(self) -> None:
        fresh = RegistryMirror(self._store, self.keys)
        before = self._snapshot() if self.revision else None
        start_after: bytes | None = None
        revision = 0
        while True:
            page = await self._store.list(
                self.keys.root, limit=self._page_size, start_after=start_after, revision=revision
            )
            revision = revision or page.revision
            for kv in page.items:
                fresh._apply_kv(kv)
            if not page.more or not page.items:
                break
            start_after = page.items[-1].key
        self.models, self.vmodels, self.instances = fresh.models, fresh.vmodels, fresh.instances
        self.copies, self.policy, self.policy_revision = fresh.copies, fresh.policy, fresh.policy_revision
        self.drains = fresh.drains
        self.resources = fresh.resources
        self.corrupt_records += fresh.corrupt_records
        # Own writes later than the snapshot stay applied (the watch resumes after it).
        self._local = {k: v for k, v in self._local.items() if v[0] > revision}
        for rev, parsed, record in self._local.values():
            self._store_record(parsed, record, rev)
        self._advance(revision)
        if before is not None:
            self._notify_diff(before, self._snapshot())

    def _snapshot(self) -> dict[ParsedKey, Any]:
        """Every record by its key (for the difference a reload made)."""
        out: dict[ParsedKey, Any] = {}
        for kind, table in (("model", self.models), ("vmodel", self.vmodels), ("instance", self.instances)):
            out.update((ParsedKey(kind, name), r) for name, r in table.items())  # type: ignore[arg-type]
        for model_id, per in self.copies.items():
            out.update((ParsedKey("copy", model_id, i), c) for i, c in per.items())
        out.update((ParsedKey("resource", kind, name), r) for (kind, name), r in self.resources.items())
        out.update((ParsedKey("drain", i), b"1") for i in self.drains)
        out[ParsedKey("policy", "policy")] = self.policy
        return out

    def _notify_diff(self, before: dict[ParsedKey, Any], after: dict[ParsedKey, Any]) -> None:
        """After a reload (the watch could not resume): listeners hear of every key that
        changed in the gap, as if its events had arrived (the policy always: its listeners
        re-read it)."""
        for key, record in after.items():
            if key.kind == "policy" or before.get(key) != record:
                self._notify(key, record)
        for key in before.keys() - after.keys():
            self._notify(key, None)

    async def _follow(self) -> None:
        while True:
            try:
                async for ev in self._store.watch(self.keys.root, start_revision=self.revision + 1):
                    self._apply_event(ev)
            except WatchCompacted as e:
                log.warning("registry watch compacted (%s); reloading the mirror", e)
                await self._reload()

    async def _reload(self) -> None:
        """A full re-list after a compaction, retried while etcd is unreachable (the
        mirror keeps serving what it holds meanwhile)."""
        delay = 0.1
        while True:
            try:
                await self._load()
                return
            except Unavailable as e:
                log.warning("registry reload failed (will retry): %s", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _apply_kv(self, kv: KeyValue) -> None:
        self._apply(kv.key, kv.value, kv.mod_revision)

    def _apply_event(self, ev: WatchEvent) -> None:
        self._apply(ev.key, ev.value if ev.kind == "put" else None, ev.revision)
        self._advance(ev.revision)

    def _apply(self, key: bytes, value: bytes | None, revision: int) -> None:
        if self._local:
            applied = self._local.get(key)
            if applied is not None:
                if revision <= applied[0]:
                    if revision == applied[0]:
                        del self._local[key]
                    return  # apply_local already holds this write (or a later one): no decode, no notify
                del self._local[key]
        parsed = self.keys.parse(key)
        if parsed is None or parsed.kind == "leader":
            return
        if parsed.kind == "drain":
            (self.drains.add if value is not None else self.drains.discard)(parsed.name)
            for listener in self._listeners:
                listener(parsed, value)
            return
        record: Any = None
        if value is not None:
            try:
                record = rec.decode(_DECODERS[parsed.kind], value)
            except CorruptRecord as e:
                self.corrupt_records += 1
                log.error("registry key %s holds a corrupt value, ignored: %s", key.decode(errors="replace"), e)
        self._store_record(parsed, record, revision)
        self._notify(parsed, record)

    def _notify(self, parsed: ParsedKey, record: Any) -> None:
        for listener in self._listeners:
            try:
                listener(parsed, record)
            except Exception:  # a listener bug must not stop the mirror
                log.exception("registry listener failed")

    def _store_record(self, parsed: ParsedKey, record: Any, revision: int) -> None:
        if parsed.kind == "copy":
            per_model = self.copies.setdefault(parsed.name, {})
            if record is None:
                per_model.pop(parsed.instance_id, None)
                if not per_model:
                    del self.copies[parsed.name]
            else:
                per_model[parsed.instance_id] = record
            return
        if parsed.kind == "resource":
            if record is None:
                self.resources.pop((parsed.name, parsed.instance_id), None)
            else:
                self.resources[(parsed.name, parsed.instance_id)] = record
            return
        if parsed.kind == "policy":
            self.policy = record
            self.policy_revision = revision if record is not None else 0
            return
        tables: dict[str, dict[str, Any]] = {"model": self.models, "vmodel": self.vmodels, "instance": self.instances}
        table = tables[parsed.kind]
        if record is None:
            table.pop(parsed.name, None)
        else:
            table[parsed.name] = record

    def _advance(self, revision: int) -> None:
        if revision <= self.revision:
            return
        self.revision = revision
        while self._waiters and self._waiters[0][0] <= revision:
            fut = heapq.heappop(self._waiters)[2]
            if not fut.done():
                fut.set_result(None)
