"""An InferenceService's status in KServe's shape, from its vmodel's ModelMesh status.

Pure: the inputs are what ModelMesh's ``getVModelStatus`` answers (mm.VModelStatusInfo),
the placement verdict (:func:`mesh.kserve.placement.support`) and the front door's
URLs; the mapping follows modelmesh-serving's ``updatePredictorStatusFromVModel``
and ``InferenceServiceRegistry.UpdateStatus``:

- model states: NOT_LOADED -> Standby, LOADING -> Loading, LOADED -> Loaded,
  LOADING_FAILED -> FailedToLoad, no vmodel -> Pending;
- transitionStatus: DEFINED -> UpToDate, TRANSITIONING -> InProgress,
  TRANSITION_FAILED -> BlockedByFailedLoad;
- a model no runtime can host: FailedToLoad with NoSupportingRuntime (or
  RuntimeNotRecognized / RuntimeDisabled), or Loading with RuntimeUnhealthy while
  its ServingRuntime has no running instance;
- Ready / PredictorReady: the active model is Loaded, or Standby (loads on the
  next request); then ``url`` and ``components.predictor.{url, grpcUrl, restUrl}``.
"""

from __future__ import annotations

from typing import Any

from mesh.kserve.placement import Support
from mesh.proto.mmesh import model_mesh_pb2 as mm

MS = mm.ModelStatusInfo
VS = mm.VModelStatusInfo
MODEL_STATES = {MS.NOT_LOADED: "Standby", MS.LOADING: "Loading", MS.LOADED: "Loaded",
                MS.LOADING_FAILED: "FailedToLoad"}
TRANSITIONS = {VS.DEFINED: "UpToDate", VS.TRANSITIONING: "InProgress", VS.TRANSITION_FAILED: "BlockedByFailedLoad"}
READY_STATES = ("Loaded", "Standby")
MODEL_LOAD_FAILED = "ModelLoadFailed"


def _state(info: mm.ModelStatusInfo, support: Support) -> tuple[str, dict[str, Any] | None]:
    """A model's KServe state and, when it is failing or waiting, its failure info."""
    state = MODEL_STATES.get(info.status, "Pending")
    if state != "Loaded" and support.reason:
        return ("Loading" if support.waiting else "FailedToLoad"), {"reason": support.reason,
                                                                    "message": support.message}
    if state == "Loaded" or not info.errors:
        return state, None
    failure: dict[str, Any] = {"reason": MODEL_LOAD_FAILED, "message": info.errors[0]}
    location = next((c.location for c in info.modelCopyInfos if c.copyStatus == MS.LOADING_FAILED), "")
    if location:
        failure["location"] = location
    return state, failure


def _copies(info: mm.ModelStatusInfo) -> dict[str, int]:
    failed = sum(c.copyStatus == MS.LOADING_FAILED for c in info.modelCopyInfos)
    # Failed loads leave no copy behind in meshserve; its recent failures stand for them.
    recent = len(info.errors) - failed if failed < len(info.errors) else 0
    return {"failedCopies": failed + recent, "totalCopies": len(info.modelCopyInfos) + recent}


def traffic(vmodel: mm.VModelStatusInfo, latest: str) -> list[dict[str, Any]]:
    """``components.predictor.traffic``: which model gets what share now (a live canary split, else all
    to the active model); ``latestRevision`` marks the current spec's model."""
    split = [(t.modelId, t.weight) for t in vmodel.trafficSplit]
    if not split or not all(t.live for t in vmodel.trafficSplit):
        split = [(vmodel.activeModelId, 1)]
    total = sum(w for _, w in split) or 1
    return [{"revisionName": m, "percent": round(100 * w / total), "latestRevision": m == latest}
            for m, w in split]


def isvc_status(vmodel: mm.VModelStatusInfo, support: Support, *, grpc_url: str, rest_url: str,
                generation: int = 1, latest_model: str = "") -> dict[str, Any]:
    """``status`` of the InferenceService whose vmodel answered ``vmodel``.

    ``support`` is the placement verdict for the current spec's model, ``latest_model``.
    """
    if vmodel.status == VS.NOT_FOUND:
        active_state, failure = "Pending", None
        target_state, transition, copies = "", "", {"failedCopies": 0, "totalCopies": 0}
    else:
        same = vmodel.activeModelId == vmodel.targetModelId
        active_state, active_failure = _state(vmodel.activeModelStatus, support if same else Support())
        transition = TRANSITIONS.get(vmodel.status, "")
        if same:
            target_state, failure, copies = "", active_failure, _copies(vmodel.activeModelStatus)
        else:
            target_state, failure = _state(vmodel.targetModelStatus, support)
            copies = _copies(vmodel.targetModelStatus)
            if transition == "BlockedByFailedLoad" and vmodel.targetModelStatus.status == MS.LOADING:
                transition = "InProgress"
        if failure is not None:
            failure["modelRevisionName"] = vmodel.targetModelId
    states: dict[str, str] = {"activeModelState": active_state}
    if target_state:
        states["targetModelState"] = target_state
    model_status: dict[str, Any] = {"transitionStatus": transition, "states": states, "copies": copies}
    if failure is not None:
        model_status["lastFailureInfo"] = failure
    ready = active_state in READY_STATES
    status: dict[str, Any] = {"observedGeneration": generation, "modelStatus": model_status}
    if ready:
        status["url"] = grpc_url
        predictor = {"url": grpc_url, "grpcUrl": grpc_url}
        if rest_url:
            predictor["restUrl"] = rest_url
        status["components"] = {"predictor": predictor}
    if vmodel.status != VS.NOT_FOUND:
        component = status.setdefault("components", {}).setdefault("predictor", {})
        component["traffic"] = traffic(vmodel, latest_model or vmodel.targetModelId)
        if latest_model:
            component["latestCreatedRevision"] = latest_model
    why = {} if ready else {"reason": (failure or {}).get("reason", active_state),
                            "message": (failure or {}).get("message", f"the active model is {active_state}")}
    flag = "True" if ready else "False"
    status["conditions"] = [{"type": "PredictorReady", "status": flag, **why},
                            {"type": "Ready", "status": flag, **why}]
    return status
