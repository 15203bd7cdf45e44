"""Executes KServe resource plans (mesh/kserve/translate.py) against the registry.

Apply: every document is validated first (one invalid document refuses the whole
request, nothing is written); ServingRuntimes are applied before InferenceServices,
so placement already knows them. An InferenceService whose vmodel already targets
the model its spec hashes to writes nothing (idempotent); a changed spec moves the
vmodel (a transition: the old model serves until the new one is loaded). Delete
removes InferenceServices before runtimes; the vmodel's deletion auto-deletes its
models (autoDeleteTargetModel), which unloads them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mesh.clock import Clock
from mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mesh.kserve.placement import Need, support
from mesh.kserve.resources import (
    INFERENCE_SERVICE,
    KIND_ALIASES,
    InferenceService,
    Resource,
    load_documents,
    parse_manifests,
)
from mesh.kserve.status import isvc_status
from mesh.kserve.translate import OWNER, Plan, concrete_model_id, deletion, translate
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.registry.registry import Registry
from router.kserve.index import ResourceIndex
from router.loader import Loader
from router.management import Management
from router.table import RoutingTable

Urls = Callable[[], tuple[str, str]]


def kind_of(name: str) -> str:
    kind = KIND_ALIASES.get(name.lower()) or next((k for k in KIND_ALIASES.values() if k == name), None)
    if kind is None:
        raise InvalidArgument(f"unknown resource kind {name!r}: use isvc (InferenceService), servingruntime "
                              "or clusterservingruntime")
    return kind


class KServeService:
    def __init__(self, registry: Registry, table: RoutingTable, management: Management, loader: Loader,
                 index: ResourceIndex, clock: Clock, urls: Urls) -> None:
        self._registry = registry
        self._table = table
        self._m = management
        self._loader = loader
        self._index = index
        self._clock = clock
        self._urls = urls

    # -- apply ---------------------------------------------------------------

    async def apply(self, manifests: str) -> list[adm.Resource]:
        resources = parse_manifests(manifests)
        resources.sort(key=lambda r: r.kind == INFERENCE_SERVICE)  # runtimes first
        for r in resources:  # refuse conflicts before anything is written
            self._check(r)
        out = []
        for r in resources:
            outcome = await self._apply_one(r)
            out.append(self._describe(r.kind, r.name, outcome))
        return out

    def _check(self, r: Resource) -> None:
        previous = self._table.mirror.resources.get((r.kind, r.name))
        if previous is not None and previous.namespace != r.namespace:
            raise AlreadyExists(
                f"{r.kind} {r.name!r} is already applied from namespace {previous.namespace or '(none)'!r}; this "
                f"mesh is one namespace (as one ModelMesh per namespace): rename it or delete the other first")
        vmodel = self._table.mirror.vmodels.get(r.name) if r.kind == INFERENCE_SERVICE else None
        if vmodel is not None and vmodel.owner != OWNER:
            raise FailedPrecondition(
                f"vmodel {r.name!r} exists and is owned by {vmodel.owner or 'nobody'!r}, not by an "
                "InferenceService: delete it (ModelMesh deleteVModel) or name the InferenceService differently")

    async def _apply_one(self, r: Resource) -> str:
        previous = self._table.mirror.resources.get((r.kind, r.name))
        plan = translate(r, previous=previous, now_ms=self._clock.now_ms())
        if plan.vmodel is not None:
            await self._set_vmodel(plan)
        if plan.unchanged:
            return "unchanged"
        revision = await self._registry.put_resource(plan.resource)
        await self._table.mirror.wait_for(revision)
        return "created" if previous is None else "configured"

    async def _set_vmodel(self, plan: Plan) -> None:
        w = plan.vmodel
        assert w is not None
        current = self._table.mirror.vmodels.get(w.vmodel_id)
        models = self._table.mirror.models
        split = w.split if all(m in models for m in w.split if m != w.target_model_id) else {}
        if current is not None and (split in (current.split, current.pending_split) if split else
                                    current.target_model == w.target_model_id and not current.split
                                    and not current.pending_split):
            return  # already there (or on its way): applying again changes nothing
        if not w.register and w.target_model_id not in models:
            raise FailedPrecondition(
                f"InferenceService {w.vmodel_id!r}: canaryTrafficPercent is 0 but the rolled-out model "
                f"{w.target_model_id!r} is gone: apply it with canaryTrafficPercent above 0, or without it")
        if w.register:
            await self._m.register(w.target_model_id, mm.ModelInfo(type=w.type, path=w.path, key=w.key),
                                   auto_delete=w.auto_delete_target, labels=w.labels)
        if split:  # a canary: the rolled-out model keeps the rest of the traffic
            await self._m.vmodels.set_split(w.vmodel_id, split, w.owner, sync=False)
            return
        await self._m.vmodels.set(mm.SetVModelRequest(
            vModelId=w.vmodel_id, targetModelId=w.target_model_id, owner=w.owner,
            autoDeleteTargetModel=w.auto_delete_target, loadNow=w.load_now), None)

    # -- delete --------------------------------------------------------------

    async def delete(self, manifests: str, kind: str, name: str) -> list[adm.Resource]:
        if manifests.strip():
            targets = []
            for i, doc in enumerate(load_documents(manifests), 1):
                meta = doc.get("metadata") if isinstance(doc, dict) else None
                if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
                    raise InvalidArgument(f"document {i}: needs kind and metadata.name to be deleted")
                targets.append((kind_of(str(doc.get("kind"))), meta["name"]))
        elif kind and name:
            targets = [(kind_of(kind), name)]
        else:
            raise InvalidArgument("give manifests (delete -f FILE) or a kind and a name (delete isvc NAME)")
        targets.sort(key=lambda t: t[0] != INFERENCE_SERVICE)  # InferenceServices before their runtimes
        out = []
        for k, n in targets:
            record = self._table.mirror.resources.get((k, n))
            if record is None:
                out.append(adm.Resource(kind=k, name=n, outcome="not found"))
                continue
            d = deletion(k, n)
            if d.vmodel_id:
                vmodel = self._table.mirror.vmodels.get(d.vmodel_id)
                if vmodel is not None and vmodel.owner == d.owner:
                    await self._m.vmodels.delete(mm.DeleteVModelRequest(vModelId=d.vmodel_id, owner=d.owner))
            await self._registry.delete_resource(k, n)
            await self._table.mirror.wait_for(await self._registry.store.revision())
            out.append(adm.Resource(kind=k, name=n, namespace=record.namespace, outcome="deleted"))
        return out

    # -- get -----------------------------------------------------------------

    def get(self, kind: str, name: str) -> list[adm.Resource]:
        k = kind_of(kind or INFERENCE_SERVICE)
        if name:
            if (k, name) not in self._table.mirror.resources:
                raise NotFound(f"{k} {name!r} is not applied (meshserve get {kind or 'isvc'} lists them)")
            names = [name]
        else:
            names = sorted(n for kk, n in self._table.mirror.resources if kk == k)
        return [self._describe(k, n, "") for n in names]

    def status(self, isvc: InferenceService, generation: int) -> dict[str, Any]:
        vmodel = self._m.vmodels.status(mm.GetVModelStatusRequest(vModelId=isvc.name))
        verdict = support(Need.of(isvc), self._index.runtimes(), self._loader.view().instances)
        grpc_url, rest_url = self._urls()
        return isvc_status(vmodel, verdict, grpc_url=grpc_url, rest_url=rest_url, generation=generation,
                           latest_model=concrete_model_id(isvc))

    def _describe(self, kind: str, name: str, outcome: str) -> adm.Resource:
        record = self._table.mirror.resources.get((kind, name))
        if record is None:
            return adm.Resource(kind=kind, name=name, outcome=outcome)
        obj: dict[str, Any] = json.loads(json.dumps(record.manifest))
        obj.setdefault("metadata", {})["generation"] = record.generation
        isvc = self._index.inference_service(name) if kind == INFERENCE_SERVICE else None
        if isvc is not None:
            obj["status"] = self.status(isvc, record.generation)
        return adm.Resource(kind=kind, name=name, namespace=record.namespace, outcome=outcome,
                            warnings=list(record.warnings), object_json=json.dumps(obj, sort_keys=True))
