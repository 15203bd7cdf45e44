"""``mmesh.ModelMesh``: the management API, with ModelMesh's semantics.

Writes go to etcd; each RPC then waits until this router's mirror has applied
its own write (read-your-writes), so a request for the id routes at once. A
registration applies its committed record to the mirror itself instead of waiting
for the watch to bring it back; a read of an id the mirror lacks reads it from the
registry first, so other routers see the model as soon as the call returns.
"""

from __future__ import annotations

import dataclasses
import logging
from urllib.parse import urlparse

import grpc

from mesh.clock import Clock
from mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, MeshError
from mesh.grpc_errors import translate_errors
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from mesh.registry import records as rec
from mesh.registry.ids import validate_id
from mesh.registry.registry import Registry
from mesh.tasks import TaskSet
from router.loader import Loader
from router.runtimes import RuntimeClients
from router.settings import RouterSettings
from router.status import model_status
from router.table import RoutingTable
from router.vmodels import VModels

log = logging.getLogger(__name__)

SCHEMES = {"", "file", "s3", "gs", "http", "https", "pvc"}


def check_model_info(info: mm.ModelInfo, what: str = "modelInfo") -> None:
    if not info.type.strip():
        raise InvalidArgument(f"{what}.type is required (e.g. onnx, pytorch)")
    scheme = urlparse(info.path).scheme if info.path else ""
    if scheme not in SCHEMES and not (len(scheme) == 1 and info.path[1:2] == ":"):
        raise InvalidArgument(
            f"{what}.path {info.path!r} has unsupported scheme {scheme!r}: use s3://, gs://, http(s)://, "
            "file://, pvc:// or a local path"
        )


class Management(mm_grpc.ModelMeshServicer):
    def __init__(self, settings: RouterSettings, registry: Registry, table: RoutingTable, loader: Loader,
                 runtimes: RuntimeClients, clock: Clock, tasks: TaskSet) -> None:
        self._s = settings
        self._registry = registry
        self._table = table
        self._loader = loader
        self._runtimes = runtimes
        self._clock = clock
        self._tasks = tasks
        self.vmodels = VModels(self, settings, registry, table, loader, clock, tasks)

    # -- shared helpers (also used by VModels) -----------------------------

    def status(self, model_id: str) -> mm.ModelStatusInfo:
        return model_status(self._table, model_id, self._clock.now_ms(), self._s.failure_ttl_s,
                            self._s.max_load_failures)

    def deadline(self, context: grpc.aio.ServicerContext | None) -> float:
        remaining = context.time_remaining() if context is not None else None
        budget = self._s.load_timeout_s if remaining is None else min(remaining, self._s.load_timeout_s)
        return self._clock.monotonic() + budget

    async def register(self, model_id: str, info: mm.ModelInfo, last_used_ms: int = 0,
                       auto_delete: bool = False, labels: dict[str, str] | None = None) -> None:
        """Creates the model record; same info again is a no-op, other info is refused."""
        validate_id(model_id)
        check_model_info(info)
        now = self._clock.now_ms()
        record = rec.ModelRecord(model_id, info.type, info.path, info.key, registered_ms=now,
                                 last_used_ms=last_used_ms or now, auto_delete=auto_delete, labels=labels or {})
        key = self._registry.keys.model(model_id)
        try:
            revision = await self._registry.create_model(record)
        except AlreadyExists:
            current = await self._registry.get_model(model_id)
            if current is not None:
                c = current.record
                if (c.type, c.path, c.key) != (info.type, info.path, info.key):
                    raise AlreadyExists(
                        f"model {model_id!r} is already registered with different type/path/key; model content "
                        "is immutable per id: register a new id (and move a vmodel to it) or unregister first"
                    ) from None
                # Registered elsewhere a moment ago, perhaps: this router serves it from now on too.
                self._table.mirror.apply_local(key, c, current.mod_revision)
                return
            revision = await self._registry.create_model(record)
        # Read-your-writes without the watch's round trip: the record is committed at ``revision``.
        self._table.mirror.apply_local(key, record, revision)

    async def known(self, model_id: str) -> bool:
        """Whether ``model_id`` is registered, reading it from the registry before saying no."""
        mirror = self._table.mirror
        if model_id in mirror.models:
            return True
        await mirror.refresh(mirror.keys.model(model_id))
        return model_id in mirror.models

    def load_in_background(self, model_id: str) -> None:
        deadline = self._clock.monotonic() + self._s.load_timeout_s
        self._tasks.spawn(self._quiet_load(model_id, deadline), f"load:{model_id}")

    async def _quiet_load(self, model_id: str, deadline: float) -> None:
        try:
            await self._loader.ensure_loaded(model_id, deadline)
        except MeshError as e:
            log.info("background load of %s failed: %s", model_id, e)

    async def load_and_report(self, model_id: str, context: grpc.aio.ServicerContext | None) -> mm.ModelStatusInfo:
        try:
            await self._loader.ensure_loaded(model_id, self.deadline(context))
        except MeshError as e:
            log.info("sync load of %s failed: %s", model_id, e)
        return self.status(model_id)

    async def unload_everywhere(self, model_id: str) -> None:
        for instance_id in list(self._table.copies(model_id)):
            endpoint = self._table.endpoint(instance_id)
            try:
                if endpoint:
                    await self._runtimes.unload_model(endpoint, model_id)
            except grpc.aio.AioRpcError as e:
                log.warning("unload of %s on %s failed: %s", model_id, instance_id, e.details())
            finally:
                await self._registry.delete_copy(model_id, instance_id)

    async def delete_model(self, model_id: str) -> None:
        if await self._registry.delete_model(model_id):
            await self._table.mirror.wait_for(await self._registry.store.revision())
        await self.unload_everywhere(model_id)

    # -- RPCs ----------------------------------------------------------------

    @translate_errors
    async def registerModel(self, request: mm.RegisterModelRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:  # noqa: N802
        await self.register(request.modelId, request.modelInfo, request.lastUsedTime)
        if request.loadNow and request.sync:
            return await self.load_and_report(request.modelId, context)
        if request.loadNow:
            self.load_in_background(request.modelId)
        return self.status(request.modelId)

    @translate_errors
    async def unregisterModel(self, request: mm.UnregisterModelRequest, context: grpc.aio.ServicerContext) -> mm.UnregisterModelResponse:  # noqa: N802
        model_id = validate_id(request.modelId)
        users = self._table.vmodels_referring_to(model_id)
        if users:
            raise FailedPrecondition(
                f"model {model_id!r} is used by vmodel(s) {', '.join(users)}: move or delete them first"
            )
        await self.delete_model(model_id)
        return mm.UnregisterModelResponse()

    @translate_errors
    async def getModelStatus(self, request: mm.GetStatusRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:  # noqa: N802
        model_id = validate_id(request.modelId)
        await self.known(model_id)  # NOT_FOUND only once the registry agrees
        return self.status(model_id)

    @translate_errors
    async def ensureLoaded(self, request: mm.EnsureLoadedRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:  # noqa: N802
        model_id = validate_id(request.modelId)
        if not await self.known(model_id):
            return mm.ModelStatusInfo(status=mm.ModelStatusInfo.NOT_FOUND)
        if request.lastUsedTime:
            ts = int(request.lastUsedTime)
            await self._registry.update_model(model_id, lambda r: dataclasses.replace(r, last_used_ms=ts) if r else None)
        if request.sync:
            return await self.load_and_report(model_id, context)
        if not self._table.loaded_on(model_id):
            self.load_in_background(model_id)
        return self.status(model_id)

    @translate_errors
    async def setVModel(self, request: mm.SetVModelRequest, context: grpc.aio.ServicerContext) -> mm.VModelStatusInfo:  # noqa: N802
        return await self.vmodels.set(request, context)

    @translate_errors
    async def deleteVModel(self, request: mm.DeleteVModelRequest, context: grpc.aio.ServicerContext) -> mm.DeleteVModelResponse:  # noqa: N802
        await self.vmodels.delete(request)
        return mm.DeleteVModelResponse()

    @translate_errors
    async def getVModelStatus(self, request: mm.GetVModelStatusRequest, context: grpc.aio.ServicerContext) -> mm.VModelStatusInfo:  # noqa: N802
        return self.vmodels.status(request)
