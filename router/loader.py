"""Getting a model loaded somewhere: placement, single flight, failure records.

One load per model however many requests wait: inside a router through a shared
future per model, across routers through an etcd transaction that creates the
copy key (``copies/<model>/<instance>`` in LOADING, under the instance's lease)
only if absent. Whoever loses the race waits for the copy to turn LOADED.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable

import grpc

from mesh.clock import Clock
from mesh.errors import (
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    MeshError,
    ModelLoadingFailed,
    ModelNotFound,
    RegistryUnavailable,
    ResourceExhausted,
    Unavailable,
)
from mesh.grpc_errors import from_load_error
from mesh.model_types import canonical_model_type
from mesh.policy.placement import REQUIRE_PREFIX, PlacementPolicy, near_equals, rank
from mesh.policy.view import ClusterView, InstanceView, ModelView
from mesh.registry import records as rec
from mesh.registry.registry import Registry
from router.runtimes import RuntimeClients
from router.settings import RouterSettings
from router.table import RoutingTable

log = logging.getLogger(__name__)


#: A measured size is written back to the model record when none was measured yet, when
#: a new measurement exceeds the recorded one by more than this fraction, or when it is
#: under half of it. Resident-memory growth varies from load to load (pages, overlapping
#: loads charge the prediction); a record rewrite per load would cost two etcd round trips
#: and a watch event on every router, and the record's size only guides placement.
SIZE_RECORD_TOLERANCE = 0.1


def size_worth_recording(model: rec.ModelRecord, measured: int) -> bool:
    if not model.size_measured or model.failures:
        return True  # the first measurement, or failures to clear after a success
    return measured > (1 + SIZE_RECORD_TOLERANCE) * model.size_bytes or 2 * measured < model.size_bytes


def active_failures(model: rec.ModelRecord, now_ms: int, ttl_s: float) -> list[rec.LoadFailure]:
    return [f for f in model.failures if now_ms - f.at_ms < ttl_s * 1000]


class Loader:
    def __init__(self, settings: RouterSettings, registry: Registry, table: RoutingTable,
                 runtimes: RuntimeClients, clock: Clock, placement: PlacementPolicy = rank,
                 spread_ties: Callable[[], bool] = lambda: True) -> None:
        self._s = settings
        self._registry = registry
        self._table = table
        self._runtimes = runtimes
        self._clock = clock
        self._placement = placement
        self._spread_ties = spread_ties
        self._inflight: dict[str, asyncio.Task[str]] = {}
        #: outcome -> count; the server exports it as meshserve_router_loads_total.
        self.on_load: Callable[[str], None] = lambda outcome: None

    def view(self) -> ClusterView:
        """The cluster as placement sees it.

        Instance records are rewritten at most once a second, so a burst of loads
        would all see the same stale usage; copy keys change at once (a LOADING
        claim carries the predicted size), so usage and model count take the
        larger of the two (the copy keys' sums are kept incrementally: no walk per miss).
        """
        usage = self._table.usage
        views = []
        for r in self._table.mirror.instances.values():
            v = InstanceView.of(r, draining=self._table.drained(r.instance_id) or self._table.is_suspect(r.instance_id))
            used, count = usage.of(r.instance_id)
            if used > v.used_bytes or count > v.model_count:
                v = dataclasses.replace(v, used_bytes=max(v.used_bytes, used), model_count=max(v.model_count, count))
            views.append(v)
        return ClusterView(tuple(views), self._clock.now_ms())

    def model_view(self, model: rec.ModelRecord, *, extra_exclude: set[str] = frozenset()) -> ModelView:  # type: ignore[assignment]
        now = self._clock.now_ms()
        failed = {f.instance_id for f in active_failures(model, now, self._s.failure_ttl_s)}
        required = {k[len(REQUIRE_PREFIX):]: v for k, v in model.labels.items() if k.startswith(REQUIRE_PREFIX)}
        return ModelView(
            model.model_id, canonical_model_type(model.type), model.size_bytes or self._table.usage.typical_size(),
            frozenset(i for i, c in self._table.copies(model.model_id).items()
                      if not self._table.is_suspect(i, model.model_id)) | frozenset(extra_exclude),
            frozenset(failed), required, dict(model.labels),
        )

    async def ensure_loaded(self, model_id: str, deadline: float) -> str:
        """Returns an instance holding the model LOADED, loading it if needed."""
        loaded = self._table.loaded_on(model_id)
        if loaded:
            return loaded[0]
        task = self._inflight.get(model_id)
        if task is None:
            # The load is shared by every request that waits for it: it runs to the load
            # timeout, not to the deadline of whichever request happened to start it (a
            # 1 ms request would fail it for all); each waiter gives up at its own deadline.
            load_deadline = max(deadline, self._clock.monotonic() + self._s.load_timeout_s)
            task = asyncio.get_running_loop().create_task(self._load_one(model_id, load_deadline, add_copy=False))
            self._inflight[model_id] = task

            def forget(t: asyncio.Task[str], m: str = model_id) -> None:
                if self._inflight.get(m) is t:
                    del self._inflight[m]

            task.add_done_callback(forget)
        remaining = deadline - self._clock.monotonic()
        try:
            async with asyncio.timeout(max(0.001, remaining)):  # not wait_for: no extra task per waiter
                return await asyncio.shield(task)
        except TimeoutError:
            raise DeadlineExceeded(f"model {model_id!r} did not finish loading before the request's deadline") from None

    async def add_copy(self, model_id: str, deadline: float) -> str:
        """Loads one more copy on an instance that has none (scale-up, min copies)."""
        return await self._load_one(model_id, deadline, add_copy=True)

    async def _load_one(self, model_id: str, deadline: float, *, add_copy: bool) -> str:
        tried: set[str] = set()
        last_error: MeshError | None = None
        while True:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise last_error or DeadlineExceeded(f"model {model_id!r} could not be loaded before the deadline")
            model = self._table.mirror.models.get(model_id)
            if model is None:
                raise ModelNotFound(f"model {model_id!r} is not registered")
            copies = self._table.copies(model_id)
            if not add_copy:
                loaded = self._table.loaded_on(model_id)
                if loaded:
                    return loaded[0]
                if any(c.state == rec.LOADING and i in self._table.mirror.instances
                       and not self._table.is_suspect(i) for i, c in copies.items()):
                    await self._table.wait_for_change(model_id, min(remaining, 1.0))
                    continue
            failures = active_failures(model, self._clock.now_ms(), self._s.failure_ttl_s)
            if len(failures) >= self._s.max_load_failures:
                if last_error is not None and not isinstance(last_error, ModelLoadingFailed):
                    raise last_error  # this request's own attempt: its kind (UNAVAILABLE, RESOURCE_EXHAUSTED...)
                reasons = "; ".join(f"{f.instance_id}: {f.reason}" for f in failures[-3:])
                raise ModelLoadingFailed(
                    f"model {model_id!r} failed to load {len(failures)} times recently ({reasons}); "
                    f"it is LOADING_FAILED until failures expire ({self._s.failure_ttl_s:.0f}s) or it is re-registered"
                )
            seen_at = self._table.mirror.revision  # the copies this decision is based on
            view, wanted = self.view(), self.model_view(model, extra_exclude=tried)
            ranked = list(self._placement(view, wanted))
            if not ranked:
                if last_error is not None:
                    raise last_error
                no_type_error(model, view)
                n = len(self._table.mirror.instances)
                raise Unavailable(
                    f"no runtime can load model {model_id!r} (type {model.type!r}, {model.size_bytes} bytes): "
                    f"{n} runtime instance(s) registered, none eligible (shutting down, wrong type or labels, "
                    "too small, or already holding it)"
                )
            # The default ranking breaks near-ties at random (as ModelMesh does) so that
            # routers with slightly stale views spread a burst; other policies mean
            # their order (pack must pack).
            instance_id = random.choice(near_equals(view, wanted, ranked)) if self._spread_ties() else ranked[0]
            # No eligible runtime has room (for a model of unknown size: not a byte free):
            # the load will evict, under the runtime's churn guard.
            free = {i.instance_id: i.free_bytes for i in view.instances}
            mesh_full = not any(free.get(i, 0) >= max(wanted.size_bytes, 1) for i in ranked)
            try:
                return await self._load_on(model, instance_id, remaining, seen_at, mesh_full)
            except (ResourceExhausted, Unavailable) as e:
                # Did not fit there, or the runtime is gone: another instance may do.
                log.info("load of %s on %s: %s; trying elsewhere", model_id, instance_id, e)
                tried.add(instance_id)
                answered = getattr(e, "from_runtime", False)
                if isinstance(e, Unavailable) and not answered:  # unreachable, not "its storage is"
                    self._table.suspect(instance_id)
                last_error = e
                if answered:
                    # The runtime answered (storage unreachable, disk cache full): the model's
                    # status must say why, even though another instance may still succeed.
                    await self._record_failure(model_id, instance_id, str(e))
            except _Lost:
                # Another router claimed it first: wait for that load to show.
                await self._table.wait_for_change(model_id, min(remaining, 0.5))
            except DeadlineExceeded:
                raise
            except Conflict:
                # ABORTED: an unload cancelled the runtime's load (no fault of the model's,
                # nothing to record, no other runtime to try); the model may be gone too.
                if model_id not in self._table.mirror.models:
                    raise ModelNotFound(f"model {model_id!r} was unregistered while it was loading") from None
                raise
            except MeshError as e:
                tried.add(instance_id)
                last_error = e
                await self._record_failure(model_id, instance_id, str(e))

    async def _load_on(self, model: rec.ModelRecord, instance_id: str, remaining: float, seen_at: int,
                       mesh_full: bool) -> str:
        inst = self._table.mirror.instances.get(instance_id)
        if inst is None:
            raise Unavailable(f"runtime {instance_id} left")
        now = self._clock.now_ms()
        claim = rec.CopyRecord(model.model_id, instance_id, rec.LOADING, since_ms=now, size_bytes=model.size_bytes)
        try:
            claimed = await self._registry.claim_copy(claim, lease=inst.lease_id, copies_seen_at=seen_at)
        except RegistryUnavailable:
            raise
        except MeshError as e:  # the instance's lease expired under us
            raise Unavailable(f"runtime {instance_id} is gone ({e})") from None
        if claimed is None:
            raise _Lost()
        timeout = min(self._s.load_timeout_s, remaining)
        try:
            resp = await self._runtimes.load_model(inst.endpoint, model.model_id, model.type, model.path, model.key,
                                                   timeout, mesh_full=mesh_full)
        except grpc.aio.AioRpcError as e:
            self.on_load(e.code().name)
            await self._cleanup_failed(model.model_id, instance_id, inst.endpoint, e.code())
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"loading model {model.model_id!r} on {instance_id} timed out after {timeout:.1f}s") from None
            err = from_load_error(e, f"loading model {model.model_id!r} on runtime {instance_id}")
            # A runtime shutting down answers UNAVAILABLE too: that is no fault of the model.
            err.from_runtime = "shutting down" not in (e.details() or "")  # type: ignore[attr-defined]
            raise err from None
        except asyncio.CancelledError:
            await asyncio.shield(self._cleanup_failed(model.model_id, instance_id, inst.endpoint, grpc.StatusCode.CANCELLED))
            raise
        self.on_load("OK")
        if resp.sizeInBytes and size_worth_recording(model, int(resp.sizeInBytes)):
            size = int(resp.sizeInBytes)
            try:
                await self._registry.update_model(
                    model.model_id,
                    lambda r: dataclasses.replace(r, size_bytes=size, size_measured=True, failures=()) if r else None,
                )
            except MeshError as e:
                log.warning("could not record size of %s: %s", model.model_id, e)
        # The runtime turns the copy key LOADED; wait until the mirror has it so
        # the request that triggered the load finds it.
        deadline = self._clock.monotonic() + 5.0
        while self._table.copies(model.model_id).get(instance_id, claim).state != rec.LOADED:
            if self._clock.monotonic() > deadline or instance_id not in self._table.copies(model.model_id):
                break
            await self._table.wait_for_change(model.model_id, 0.5)
        return instance_id

    async def _cleanup_failed(self, model_id: str, instance_id: str, endpoint: str, code: grpc.StatusCode) -> None:
        """A failed or cancelled load must leave nothing loaded and no claim behind."""
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            try:
                await self._runtimes.unload_model(endpoint, model_id, timeout_s=10)
            except grpc.aio.AioRpcError:
                pass
        copy = self._table.copies(model_id).get(instance_id)
        if copy is None or copy.state != rec.LOADED:
            try:
                await self._registry.delete_copy(model_id, instance_id)
            except MeshError:
                pass

    async def _record_failure(self, model_id: str, instance_id: str, reason: str) -> None:
        now = self._clock.now_ms()
        ttl = self._s.failure_ttl_s

        def add(r: rec.ModelRecord | None) -> rec.ModelRecord | None:
            if r is None:
                return None
            kept = tuple(active_failures(r, now, ttl))[-9:]
            return dataclasses.replace(r, failures=kept + (rec.LoadFailure(instance_id, now, reason[:500]),))

        try:
            v = await self._registry.update_model(model_id, add)
            if v is not None:
                await self._table.mirror.wait_for(v.mod_revision, 5)
        except MeshError as e:
            log.warning("could not record load failure of %s: %s", model_id, e)


def no_type_error(model: rec.ModelRecord, view: ClusterView) -> None:
    """FAILED_PRECONDITION when no runtime at all serves the model's type (waiting or
    retrying cannot help): names the type and what each runtime serves."""
    wanted = canonical_model_type(model.type)
    if not view.instances or any(not i.model_types or wanted in i.model_types for i in view.instances):
        return
    seen = "; ".join(f"{i.instance_id} ({', '.join(i.model_types)})" for i in view.instances[:10])
    more = f" and {len(view.instances) - 10} more" if len(view.instances) > 10 else ""
    raise FailedPrecondition(
        f"no runtime serves model type {model.type!r} (model {model.model_id!r}); runtimes seen: {seen}{more}. "
        "Start a runtime whose image has the type's library (pip install 'meshserve[<type>]'), or register "
        "the model with a type listed here"
    )


class _Lost(Exception):
    """Another router created the copy key first."""
