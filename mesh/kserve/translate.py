"""One KServe resource -> the registry writes that realise it on the mesh.

A pure function (no I/O, no clock of its own): the router's MeshAdmin executes
the plan today, a Kubernetes controller can execute the same plan through
ModelMesh's ``setVModel`` / ``deleteVModel`` later. As in modelmesh-serving
(``controllers/predictor_controller.go``), an InferenceService becomes a vmodel
named after it whose target is the concrete model ``<name>__isvc-<hash>``,
registered with ``autoDeleteTargetModel``: a changed spec is a new hash, so a
vmodel transition (the old model serves until the new one has loaded), and
deleting the resource deletes the vmodel and, with it, its models.

``canaryTrafficPercent: P`` on a changed spec splits the vmodel's traffic instead
(MeshAdmin SetTrafficSplit): P % to the new model, the rest to the last rolled-out
one, as KServe's canary rollout does; applying the spec without it (or with 100)
promotes the new model to all the traffic, and P = 0 keeps everything on the
rolled-out model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from mesh.kserve.resources import INFERENCE_SERVICE, InferenceService, Resource
from mesh.registry.records import ResourceRecord

#: vmodel owner of InferenceServices (modelmesh-serving's source id).
OWNER = "isvc"
#: Model labels placement and status read (mesh/kserve/placement.py).
ISVC_LABEL = "kserve.isvc"
FORMAT_LABEL = "kserve.format"
FORMAT_VERSION_LABEL = "kserve.format-version"
#: A pinned ServingRuntime: runtime instances labelled ``runtime=<name>`` only.
RUNTIME_LABEL = "runtime"
REQUIRE_RUNTIME = "require." + RUNTIME_LABEL


@dataclass(frozen=True, slots=True)
class VModelWrite:
    """setVModel(vModelId, owner, targetModelId, modelInfo, autoDeleteTargetModel, loadNow),
    plus the labels the target model is registered with."""

    vmodel_id: str
    target_model_id: str
    type: str
    path: str
    key: str
    labels: dict[str, str] = field(default_factory=dict)
    owner: str = OWNER
    auto_delete_target: bool = True
    load_now: bool = True
    #: A canary: SetTrafficSplit(vmodel, {rolled-out: 100 - P, new: P}) instead of setVModel.
    split: dict[str, int] = field(default_factory=dict)
    #: Register ``target_model_id`` from this spec first (False: it is the rolled-out
    #: model of an earlier spec, already registered).
    register: bool = True


@dataclass(frozen=True, slots=True)
class Plan:
    #: Put at ``resources/<kind>/<name>``.
    resource: ResourceRecord
    #: None for ServingRuntimes (placement data only: the resource record itself).
    vmodel: VModelWrite | None = None
    #: The stored resource already says exactly this: nothing to write.
    unchanged: bool = False


@dataclass(frozen=True, slots=True)
class Deletion:
    kind: str
    name: str
    #: deleteVModel(vModelId, owner) for InferenceServices.
    vmodel_id: str = ""
    owner: str = OWNER


def model_key(isvc: InferenceService) -> str:
    """The ModelMesh model key JSON (ModelKeyInfo): storage_key, storage_params, model_type, schema_path."""
    key: dict[str, Any] = {"model_type": {"name": isvc.format, **({"version": isvc.format_version}
                                                                 if isvc.format_version else {})}}
    if isvc.storage_key:
        key["storage_key"] = isvc.storage_key
    if isvc.storage_params:
        key["storage_params"] = dict(isvc.storage_params)
    if isvc.schema_path:
        key["schema_path"] = isvc.schema_path
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def model_labels(isvc: InferenceService) -> dict[str, str]:
    labels = {ISVC_LABEL: isvc.name, FORMAT_LABEL: isvc.format}
    if isvc.format_version:
        labels[FORMAT_VERSION_LABEL] = isvc.format_version
    if isvc.runtime:
        labels[REQUIRE_RUNTIME] = isvc.runtime
    return labels


def spec_hash(isvc: InferenceService) -> str:
    """10 hex digits of the SHA-1 of the predictor as the mesh acts on it (ModelMesh's ``Hash``):
    fields meshserve ignores do not move the vmodel."""
    acted_on = {"type": isvc.format, "version": isvc.format_version, "runtime": isvc.runtime,
                "protocol": isvc.protocol_version, "uri": isvc.storage_uri, "path": isvc.storage_path,
                "key": model_key(isvc)}
    return hashlib.sha1(json.dumps(acted_on, sort_keys=True).encode()).hexdigest()[:10]


def concrete_model_id(isvc: InferenceService) -> str:
    return f"{isvc.name}__{OWNER}-{spec_hash(isvc)}"


def translate(resource: Resource, *, previous: ResourceRecord | None, now_ms: int) -> Plan:
    """The writes for applying ``resource`` over ``previous`` (the stored record, if any)."""
    record = ResourceRecord(
        kind=resource.kind, name=resource.name, namespace=resource.namespace,
        api_version=str(resource.manifest.get("apiVersion", "")), manifest=resource.manifest,
        warnings=resource.warnings, generation=1, applied_ms=now_ms,
    )
    unchanged = previous is not None and (previous.manifest, previous.warnings) == (record.manifest, record.warnings)
    if previous is not None:
        same_spec = previous.manifest.get("spec") == record.manifest.get("spec")
        record = ResourceRecord(**{**_fields(record), "generation": previous.generation + (0 if same_spec else 1),
                                   "applied_ms": previous.applied_ms if unchanged else now_ms})
    vmodel = None
    if isinstance(resource, InferenceService):
        vmodel, rolled_out = _vmodel_write(resource, previous.rolled_out_model if previous else "")
        record = ResourceRecord(**{**_fields(record), "rolled_out_model": rolled_out})
        unchanged = unchanged and previous is not None and previous.rolled_out_model == rolled_out
    return Plan(record, vmodel, unchanged)


def _vmodel_write(isvc: InferenceService, rolled_out: str) -> tuple[VModelWrite, str]:
    """The vmodel write for ``isvc`` and the model that is rolled out after it."""
    new = concrete_model_id(isvc)
    plain = VModelWrite(isvc.name, new, isvc.format, isvc.storage_uri or isvc.storage_path, model_key(isvc),
                        model_labels(isvc))
    percent = isvc.canary_percent
    if percent is None or percent >= 100 or not rolled_out or rolled_out == new:
        return plain, new  # all traffic to this spec once it has loaded
    if percent == 0:  # the new spec gets nothing yet: stay on the rolled-out model
        return VModelWrite(isvc.name, rolled_out, plain.type, plain.path, plain.key, register=False), rolled_out
    return VModelWrite(isvc.name, new, plain.type, plain.path, plain.key, plain.labels,
                       split={rolled_out: 100 - percent, new: percent}), rolled_out


def deletion(kind: str, name: str) -> Deletion:
    return Deletion(kind, name, vmodel_id=name if kind == INFERENCE_SERVICE else "")


def _fields(r: ResourceRecord) -> dict[str, Any]:
    return {f: getattr(r, f) for f in r.__slots__}  # type: ignore[attr-defined]
