"""``meshserve.v1.MeshAdmin``: what ModelMesh lacks (listing, cluster status, policy, drain)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from mesh.clock import Clock
from mesh.errors import InvalidArgument, ModelNotFound, NotFound, Unimplemented
from mesh.grpc_errors import translate_errors
from mesh.policy.document import PolicyDocument, dumps, parse_document
from mesh.policy.live import LivePolicy
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc
from mesh.registry import records as rec
from mesh.registry.ids import validate_id
from mesh.registry.registry import Registry
from router.status import status_name

if TYPE_CHECKING:
    from router.vmodels import VModels
from router.table import RoutingTable

if TYPE_CHECKING:
    from router.kserve.service import KServeService


def validate_policy_document(text: str) -> dict[str, Any]:
    """Parses and validates a policy document (JSON or YAML) into its canonical
    JSON object; InvalidArgument names each bad field and why."""
    return parse_document(text).to_dict()


class Admin(adm_grpc.MeshAdminServicer):
    def __init__(self, registry: Registry, table: RoutingTable, clock: Clock, status_of: Callable[[str], mm.ModelStatusInfo],
                 policy: LivePolicy | None = None, vmodels: "VModels | None" = None,
                 kserve: "KServeService | None" = None) -> None:
        self._policy = policy
        self._vmodels = vmodels
        self._kserve = kserve
        self._registry = registry
        self._table = table
        self._clock = clock
        self._status_of = status_of

    def _summary(self, m: rec.ModelRecord) -> adm.ModelSummary:
        info = self._status_of(m.model_id)
        return adm.ModelSummary(
            model_id=m.model_id, type=m.type, path=m.path, status=status_name(info), size_bytes=m.size_bytes,
            registered_ms=m.registered_ms, last_used_ms=m.last_used_ms, labels=m.labels,
            min_copies=m.min_copies, max_copies=m.max_copies, errors=list(info.errors),
            copies=[adm.CopyInfo(instance_id=i, state=c.state, since_ms=c.since_ms, size_bytes=c.size_bytes)
                    for i, c in sorted(self._table.copies(m.model_id).items())],
        )

    @translate_errors
    async def ListModels(self, request: adm.ListModelsRequest, context: grpc.aio.ServicerContext) -> adm.ListModelsResponse:  # noqa: N802
        models, token = await self._registry.list_models(request.prefix, request.page_size, request.page_token)
        return adm.ListModelsResponse(models=[self._summary(m) for m in models], next_page_token=token)

    @translate_errors
    async def GetClusterStatus(self, request: adm.GetClusterStatusRequest, context: grpc.aio.ServicerContext) -> adm.ClusterStatus:  # noqa: N802
        mirror = self._table.mirror
        per_instance: dict[str, list[str]] = {}
        copy_bytes: dict[str, int] = {}
        loaded = 0
        for model_id, copies in mirror.copies.items():
            for inst, c in copies.items():
                copy_bytes[inst] = copy_bytes.get(inst, 0) + c.size_bytes
                if c.state == rec.LOADED:
                    loaded += 1
                    per_instance.setdefault(inst, []).append(model_id)
        out = adm.ClusterStatus(registered_models=len(mirror.models), loaded_copies=loaded)
        for r in sorted(mirror.instances.values(), key=lambda r: r.instance_id):
            out.instances.append(adm.InstanceStatus(
                instance_id=r.instance_id, endpoint=r.endpoint, capacity_bytes=r.capacity_bytes,
                # Records refresh once a second; copy keys at once: show the fresher.
                used_bytes=max(r.used_bytes, copy_bytes.get(r.instance_id, 0)),
                model_count=max(r.model_count, len(per_instance.get(r.instance_id, []))),
                loads_in_progress=r.loads_in_progress,
                shutting_down=r.shutting_down or self._table.drained(r.instance_id), zone=r.zone,
                labels=r.labels, oldest_lru_ms=r.oldest_lru_ms, model_ids=sorted(per_instance.get(r.instance_id, [])),
                metrics_endpoint=r.metrics_endpoint, version=r.version, start_ms=r.start_ms,
            ))
            out.capacity_bytes += r.capacity_bytes
            out.used_bytes += out.instances[-1].used_bytes
        return out

    @translate_errors
    async def GetPolicy(self, request: adm.GetPolicyRequest, context: grpc.aio.ServicerContext) -> adm.Policy:  # noqa: N802
        got = await self._registry.get_policy()
        if got is None:  # never set: what this router runs on (its --policy-file, or the defaults)
            current = self._policy.document if self._policy is not None else PolicyDocument()
            return adm.Policy(document=dumps(current), revision=0)
        return adm.Policy(document=json.dumps(got.record.document, sort_keys=True), revision=got.mod_revision)

    @translate_errors
    async def SetPolicy(self, request: adm.SetPolicyRequest, context: grpc.aio.ServicerContext) -> adm.Policy:  # noqa: N802
        doc = validate_policy_document(request.document)
        if request.validate_only:
            return adm.Policy(document=json.dumps(doc, sort_keys=True), revision=0)
        revision = await self._registry.set_policy(
            rec.PolicyRecord(doc, self._clock.now_ms()),
            expected_revision=request.expected_revision or None,
        )
        await self._table.mirror.wait_for(revision)  # read-your-writes: this router runs on it now
        return adm.Policy(document=json.dumps(doc, sort_keys=True), revision=revision)

    @translate_errors
    async def SetModelConfig(self, request: adm.SetModelConfigRequest, context: grpc.aio.ServicerContext) -> adm.ModelSummary:  # noqa: N802
        model_id = validate_id(request.model_id)
        if request.max_copies and request.min_copies > request.max_copies:
            raise InvalidArgument(
                f"min_copies ({request.min_copies}) is more than max_copies ({request.max_copies})")
        labels = dict(request.labels)

        def apply(r: rec.ModelRecord | None) -> rec.ModelRecord | None:
            if r is None:
                raise ModelNotFound(f"model {model_id!r} is not registered")
            return dataclasses.replace(r, min_copies=request.min_copies, max_copies=request.max_copies,
                                       labels=r.labels if request.keep_labels else labels)

        v = await self._registry.update_model(model_id, apply)
        assert v is not None
        await self._table.mirror.wait_for(v.mod_revision)
        return self._summary(v.record)

    @translate_errors
    async def DrainInstance(self, request: adm.DrainInstanceRequest, context: grpc.aio.ServicerContext) -> adm.DrainInstanceResponse:  # noqa: N802
        inst = request.instance_id
        record = self._table.mirror.instances.get(inst)
        if record is None:
            raise NotFound(f"no runtime instance {inst!r} is registered (see GetClusterStatus)")
        revision = await self._registry.drain_instance(inst, lease=record.lease_id)
        await self._table.mirror.wait_for(revision)
        models = sorted(m for m, copies in self._table.mirror.copies.items() if inst in copies)
        return adm.DrainInstanceResponse(instance_id=inst, model_ids=models)

    @translate_errors
    async def SetTrafficSplit(self, request: adm.SetTrafficSplitRequest, context: grpc.aio.ServicerContext) -> mm.VModelStatusInfo:  # noqa: N802
        if self._vmodels is None:
            raise NotFound("this router does not manage vmodels")
        targets: dict[str, int] = {}
        for t in request.targets:
            if t.model_id in targets:
                raise InvalidArgument(f"split target {t.model_id!r} is given twice")
            targets[t.model_id] = t.weight
        return await self._vmodels.set_split(request.vmodel_id, targets, request.owner, request.sync)

    # -- KServe resources (router/kserve/) -----------------------------------

    def _resources(self) -> "KServeService":
        if self._kserve is None:
            raise Unimplemented("this router does not serve KServe resources")
        return self._kserve

    @translate_errors
    async def ApplyResources(self, request: adm.ApplyResourcesRequest, context: grpc.aio.ServicerContext) -> adm.ResourcesResponse:  # noqa: N802
        return adm.ResourcesResponse(resources=await self._resources().apply(request.manifests))

    @translate_errors
    async def GetResources(self, request: adm.GetResourcesRequest, context: grpc.aio.ServicerContext) -> adm.ResourcesResponse:  # noqa: N802
        return adm.ResourcesResponse(resources=self._resources().get(request.kind, request.name))

    @translate_errors
    async def DeleteResources(self, request: adm.DeleteResourcesRequest, context: grpc.aio.ServicerContext) -> adm.ResourcesResponse:  # noqa: N802
        resources = await self._resources().delete(request.manifests, request.kind, request.name)
        return adm.ResourcesResponse(resources=resources)
