"""Virtual models: a stable name whose target moves only once the new model is loaded.

setVModel to a new target marks the vmodel TRANSITIONING; a background task loads
the target and then switches ``active`` to it with a compare-and-set (so requests
keep going to the old model during the move and never fail because of it). A
router restarting resumes transitions it finds in the registry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import grpc

from mesh.clock import Clock
from mesh.errors import FailedPrecondition, MeshError, ModelNotFound
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.registry import records as rec
from mesh.registry.ids import validate_id
from mesh.registry.registry import Registry
from mesh.tasks import TaskSet
from router.loader import Loader
from router.splits import validate_split
from router.settings import RouterSettings
from router.table import RoutingTable

if TYPE_CHECKING:
    from router.management import Management

log = logging.getLogger(__name__)


class VModels:
    def __init__(self, mgmt: "Management", settings: RouterSettings, registry: Registry, table: RoutingTable,
                 loader: Loader, clock: Clock, tasks: TaskSet) -> None:
        self._m = mgmt  # for register / load / delete, which vmodels share with plain models
        self._s = settings
        self._registry = registry
        self._table = table
        self._loader = loader
        self._clock = clock
        self._tasks = tasks
        self._transitions: set[str] = set()

    def status(self, request: mm.GetVModelStatusRequest) -> mm.VModelStatusInfo:
        vid = validate_id(request.vModelId, what="vmodel id")
        v = self._table.mirror.vmodels.get(vid)
        if v is not None and request.owner and v.owner and request.owner != v.owner:
            raise FailedPrecondition(f"vmodel {vid!r} is owned by {v.owner!r}, not {request.owner!r}")
        return self._status(vid)

    def _status(self, vid: str) -> mm.VModelStatusInfo:
        from router.status import vmodel_status

        s = self._s
        return vmodel_status(self._table, vid, self._clock.now_ms(), s.failure_ttl_s, s.max_load_failures)

    async def set(self, req: mm.SetVModelRequest, context: grpc.aio.ServicerContext | None) -> mm.VModelStatusInfo:
        vid = validate_id(req.vModelId, what="vmodel id")
        target = validate_id(req.targetModelId, what="targetModelId")
        if req.HasField("modelInfo"):
            await self._m.register(target, req.modelInfo, auto_delete=req.autoDeleteTargetModel)
        elif not await self._m.known(target):  # perhaps registered through another router a moment ago
            raise ModelNotFound(f"target model {target!r} is not registered: register it or pass modelInfo")
        now = self._clock.now_ms()

        def apply(cur: rec.VModelRecord | None) -> rec.VModelRecord:
            if cur is None:
                if req.updateOnly:
                    raise ModelNotFound(f"vmodel {vid!r} does not exist (updateOnly was set)")
                if req.expectedTargetModelId:
                    raise FailedPrecondition(
                        f"vmodel {vid!r} does not exist, but expectedTargetModelId "
                        f"{req.expectedTargetModelId!r} was given")
                return rec.VModelRecord(vid, target, target, req.owner, "DEFINED",
                                        req.autoDeleteTargetModel, now)
            if cur.owner and req.owner != cur.owner:
                raise FailedPrecondition(f"vmodel {vid!r} is owned by {cur.owner!r}, not {req.owner!r}")
            if req.expectedTargetModelId and req.expectedTargetModelId != cur.target_model:
                raise FailedPrecondition(
                    f"vmodel {vid!r} targets {cur.target_model!r}, not the expected {req.expectedTargetModelId!r}")
            # A plain setVModel ends any traffic split: one target again.
            if target == cur.active_model or req.force:
                return dataclasses.replace(cur, active_model=target, target_model=target, status="DEFINED",
                                           auto_delete_target=req.autoDeleteTargetModel, updated_ms=now, error="",
                                           split={}, pending_split={})
            return dataclasses.replace(cur, target_model=target, status="TRANSITIONING",
                                       auto_delete_target=req.autoDeleteTargetModel, updated_ms=now, error="",
                                       split={}, pending_split={})

        before = self._table.mirror.vmodels.get(vid)
        v = await self._registry.update_vmodel(vid, apply)
        assert v is not None
        await self._table.mirror.wait_for(v.mod_revision)
        if before is not None and before.active_model != v.record.active_model:
            await self._maybe_auto_delete(before.active_model)
        if before is not None:  # a transition abandoned for another target, a split ended
            for dropped in sorted({before.target_model, *before.split, *before.pending_split}
                                  - {v.record.active_model, v.record.target_model}):
                await self._maybe_auto_delete(dropped)
        if v.record.status == "TRANSITIONING":
            task = self._start_transition(vid)
            if req.sync and task is not None:
                await task
        elif req.loadNow or req.sync:
            if req.sync:
                await self._m.load_and_report(target, context)
            else:
                self._m.load_in_background(target)
        return self._status(vid)

    async def set_split(self, vid: str, targets: dict[str, int], owner: str, sync: bool) -> mm.VModelStatusInfo:
        """Routes ``vid`` to ``targets`` by weight once every target with weight > 0 is
        loaded (TRANSITIONING until then; the current routing stays meanwhile)."""
        vid = validate_id(vid, what="vmodel id")
        targets = validate_split({validate_id(m, what="split target"): w for m, w in targets.items()})
        missing = sorted(m for m in targets if m not in self._table.mirror.models)
        if missing:
            mirror = self._table.mirror  # registered through another router a moment ago?
            await mirror.refresh(*(mirror.keys.model(m) for m in missing))
            missing = [m for m in missing if m not in mirror.models]
        if missing:
            raise ModelNotFound(f"split targets {', '.join(map(repr, missing))} are not registered: register them first")
        heaviest = max(sorted(targets), key=lambda m: targets[m])
        now = self._clock.now_ms()

        def apply(cur: rec.VModelRecord | None) -> rec.VModelRecord:
            if cur is None:  # a new vmodel: nothing to keep serving meanwhile, so it starts on the heaviest
                return rec.VModelRecord(vid, heaviest, heaviest, owner, "TRANSITIONING", False, now,
                                        pending_split=targets)
            if cur.owner and owner != cur.owner:
                raise FailedPrecondition(f"vmodel {vid!r} is owned by {cur.owner!r}, not {owner!r}")
            return dataclasses.replace(cur, target_model=heaviest, status="TRANSITIONING", pending_split=targets,
                                       updated_ms=now, error="")

        v = await self._registry.update_vmodel(vid, apply)
        assert v is not None
        await self._table.mirror.wait_for(v.mod_revision)
        task = self._start_transition(vid)
        if sync and task is not None:
            await task
        return self._status(vid)

    async def delete(self, req: mm.DeleteVModelRequest) -> None:
        vid = validate_id(req.vModelId, what="vmodel id")
        cur = self._table.mirror.vmodels.get(vid)
        if cur is None:
            return
        if cur.owner and req.owner != cur.owner:
            raise FailedPrecondition(f"vmodel {vid!r} is owned by {cur.owner!r}, not {req.owner!r}")
        await self._registry.delete_vmodel(vid)
        await self._table.mirror.wait_for(await self._registry.store.revision())
        for model_id in {cur.active_model, cur.target_model, *cur.split, *cur.pending_split}:
            await self._maybe_auto_delete(model_id)

    async def _maybe_auto_delete(self, model_id: str) -> None:
        model = self._table.mirror.models.get(model_id)
        if model is not None and model.auto_delete and not self._table.vmodels_referring_to(model_id):
            log.info("auto-deleting model %s (no vmodel refers to it any more)", model_id)
            await self._m.delete_model(model_id)

    def resume(self) -> None:
        """Picks up transitions left unfinished (e.g. by a router that restarted)."""
        for v in list(self._table.mirror.vmodels.values()):
            if v.status == "TRANSITIONING":
                self._start_transition(v.vmodel_id)

    def _start_transition(self, vid: str):  # type: ignore[no-untyped-def]
        if vid in self._transitions:
            return None
        self._transitions.add(vid)
        return self._tasks.spawn(self._transition(vid), f"vmodel:{vid}")

    async def _transition(self, vid: str) -> None:
        try:
            v = self._table.mirror.vmodels.get(vid)
            if v is None or v.status != "TRANSITIONING":
                return
            if v.pending_split:
                await self._switch_split(v)
                return
            target = v.target_model
            error = await self._load(target)
            now = self._clock.now_ms()

            def switch(cur: rec.VModelRecord | None) -> rec.VModelRecord | None:
                if cur is None or cur.target_model != target or cur.status != "TRANSITIONING" or cur.pending_split:
                    return cur  # moved on meanwhile; leave it
                if error:
                    return dataclasses.replace(cur, status="TRANSITION_FAILED", error=error, updated_ms=now)
                return dataclasses.replace(cur, active_model=target, status="DEFINED", error="", updated_ms=now)

            await self._commit(vid, switch, {v.active_model} - {target})
        except MeshError as e:
            log.warning("transition of vmodel %s failed: %s", vid, e)
        finally:
            self._transitions.discard(vid)

    async def _load(self, model_id: str) -> str:
        """'' once ``model_id`` is loaded, else why not."""
        try:
            await self._loader.ensure_loaded(model_id, self._clock.monotonic() + self._s.load_timeout_s)
        except MeshError as e:
            return f"target model {model_id!r} failed to load: {e}"
        return ""

    async def _switch_split(self, v: rec.VModelRecord) -> None:
        pending = dict(v.pending_split)
        errors = [e for e in await asyncio.gather(*(self._load(m) for m, w in sorted(pending.items()) if w > 0)) if e]
        error = "; ".join(errors)
        now = self._clock.now_ms()
        heaviest = max(sorted(pending), key=lambda m: pending[m])

        def switch(cur: rec.VModelRecord | None) -> rec.VModelRecord | None:
            if cur is None or cur.pending_split != pending or cur.status != "TRANSITIONING":
                return cur  # moved on meanwhile; leave it
            if error:
                return dataclasses.replace(cur, status="TRANSITION_FAILED", error=error, pending_split={},
                                           target_model=cur.active_model, updated_ms=now)
            # A split of one target is a plain vmodel again; a weight-0 target stays in the
            # split (no traffic, still referenced, so autoDeleteTargetModel keeps it).
            split = {} if len(pending) == 1 else pending
            return dataclasses.replace(cur, active_model=heaviest, target_model=heaviest, split=split,
                                       pending_split={}, status="DEFINED", error="", updated_ms=now)

        before = {v.active_model, *v.split}
        await self._commit(v.vmodel_id, switch, before - set(pending))

    async def _commit(self, vid: str, fn: Callable[[rec.VModelRecord | None], rec.VModelRecord | None],
                      released: Iterable[str]) -> None:
        """Writes the switch, then auto-deletes the models the vmodel no longer routes to."""
        result = await self._registry.update_vmodel(vid, fn)
        if result is None:
            return
        await self._table.mirror.wait_for(result.mod_revision)
        if result.record.status == "DEFINED":
            for model_id in sorted(released):
                await self._maybe_auto_delete(model_id)
