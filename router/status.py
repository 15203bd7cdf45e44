"""ModelMesh status messages computed from the registry mirror."""

from __future__ import annotations

from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.registry import records as rec
from router.loader import active_failures
from router.table import RoutingTable

MS = mm.ModelStatusInfo
_COPY_STATUS = {rec.LOADING: MS.LOADING, rec.LOADED: MS.LOADED, rec.FAILED: MS.LOADING_FAILED}


def model_status(table: RoutingTable, model_id: str, now_ms: int, failure_ttl_s: float,
                 max_failures: int) -> mm.ModelStatusInfo:
    """``max_failures`` no longer changes the status (LOADING_FAILED from the first
    failure); it stays in the signature for its callers and the loader's refusal."""
    model = table.mirror.models.get(model_id)
    if model is None:
        return mm.ModelStatusInfo(status=MS.NOT_FOUND)
    insts = table.mirror.instances
    copies = {i: c for i, c in table.copies(model_id).items() if i in insts}
    failures = active_failures(model, now_ms, failure_ttl_s)
    info = mm.ModelStatusInfo(
        errors=[f"{f.instance_id}: {f.reason}" for f in failures],
        modelCopyInfos=[
            MS.ModelCopyInfo(location=i, copyStatus=_COPY_STATUS.get(c.state, MS.UNKNOWN), time=c.since_ms)
            for i, c in sorted(copies.items())
        ],
    )
    states = {c.state for c in copies.values()}
    if rec.LOADED in states:
        info.status = MS.LOADED
    elif rec.LOADING in states:
        info.status = MS.LOADING
    elif failures:
        # ModelMesh: a model whose last load failed is LOADING_FAILED (with the reasons in
        # errors) from the first failure on; requests still retry it until max_failures
        # recent failures (router/loader.py), which refuse it until they expire.
        info.status = MS.LOADING_FAILED
    else:
        info.status = MS.NOT_LOADED
    return info


def status_name(info: mm.ModelStatusInfo) -> str:
    return MS.ModelStatus.Name(info.status)


def vmodel_status(table: RoutingTable, vmodel_id: str, now_ms: int, failure_ttl_s: float,
                  max_failures: int) -> mm.VModelStatusInfo:
    v = table.mirror.vmodels.get(vmodel_id)
    if v is None:
        return mm.VModelStatusInfo(status=mm.VModelStatusInfo.NOT_FOUND)
    active = model_status(table, v.active_model, now_ms, failure_ttl_s, max_failures)
    target = model_status(table, v.target_model, now_ms, failure_ttl_s, max_failures)
    status = mm.VModelStatusInfo.VModelStatus.Value(v.status) if v.status in (
        "DEFINED", "TRANSITIONING", "TRANSITION_FAILED") else mm.VModelStatusInfo.UNKNOWN
    out = mm.VModelStatusInfo(
        status=status, activeModelId=v.active_model, targetModelId=v.target_model,
        activeModelStatus=active, targetModelStatus=target, owner=v.owner,
    )
    if v.error:
        out.targetModelStatus.errors.append(v.error)
    live = v.pending_split or v.split
    for model_id, weight in sorted(live.items()):
        out.trafficSplit.add(modelId=model_id, weight=weight, live=not v.pending_split or model_id in v.split,
                             modelStatus=model_status(table, model_id, now_ms, failure_ttl_s, max_failures))
    return out
