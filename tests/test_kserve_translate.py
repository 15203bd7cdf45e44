"""KServe resources -> mesh, without processes: validation, translation, placement, status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh.errors import InvalidArgument
from mesh.kserve import placement as pl
from mesh.kserve.resources import InferenceService, ServingRuntime, parse_manifests, parse_resource
from mesh.kserve.status import isvc_status
from mesh.kserve.translate import OWNER, concrete_model_id, deletion, translate
from mesh.policy.placement import rank
from mesh.policy.view import ClusterView, InstanceView, ModelView
from mesh.proto.mmesh import model_mesh_pb2 as mm

MS = mm.ModelStatusInfo
VS = mm.VModelStatusInfo

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "kserve"
SEED_ISVC = (EXAMPLES / "sklearn-iris.yaml").read_text()
TRITON_RUNTIME = (EXAMPLES / "triton-runtime.yaml").read_text()


def isvc(text: str = SEED_ISVC) -> InferenceService:
    (r,) = parse_manifests(text)
    assert isinstance(r, InferenceService)
    return r


def with_predictor(predictor: dict, name: str = "m1", **meta) -> dict:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, **meta}, "spec": {"predictor": predictor}}


# -- validation --------------------------------------------------------------

def test_seed_inference_service_translates_to_a_vmodel_on_a_hashed_concrete_model() -> None:
    r = isvc()
    plan = translate(r, previous=None, now_ms=1000)
    w = plan.vmodel
    assert w is not None and w.vmodel_id == "sklearn-iris" and w.owner == OWNER == "isvc"
    assert w.target_model_id.startswith("sklearn-iris__isvc-") and len(w.target_model_id) == len("sklearn-iris__isvc-") + 10
    assert (w.type, w.path) == ("sklearn", "gs://kfserving-examples/models/sklearn/1.0/model")
    assert json.loads(w.key) == {"model_type": {"name": "sklearn"}}  # no storage.key: the config's default applies
    assert w.auto_delete_target and w.load_now
    assert w.labels == {"kserve.isvc": "sklearn-iris", "kserve.format": "sklearn"}
    assert plan.resource.kind == "InferenceService" and plan.resource.namespace == "ml-serving"
    assert "status" not in plan.resource.manifest and plan.resource.generation == 1 and not plan.unchanged


def test_same_manifest_again_is_unchanged_and_a_changed_spec_moves_the_target() -> None:
    first = translate(isvc(), previous=None, now_ms=1000)
    again = translate(isvc(), previous=first.resource, now_ms=2000)
    assert again.unchanged and again.vmodel == first.vmodel and again.resource == first.resource
    moved = isvc(SEED_ISVC.replace("1.0/model", "2.0/model"))
    changed = translate(moved, previous=first.resource, now_ms=3000)
    assert not changed.unchanged and changed.resource.generation == 2
    assert changed.vmodel is not None and first.vmodel is not None
    assert changed.vmodel.target_model_id != first.vmodel.target_model_id
    assert changed.vmodel.vmodel_id == first.vmodel.vmodel_id


def test_fields_meshserve_ignores_are_warnings_and_do_not_move_the_model() -> None:
    doc = with_predictor({
        "canaryTrafficPercent": 10, "minReplicas": 2,
        "model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://models/m1",
                  "resources": {"limits": {"memory": "2Gi"}}},
    }, annotations={"serving.kserve.io/deploymentMode": "Serverless"})
    doc["spec"]["transformer"] = {"containers": []}
    doc["spec"]["explainer"] = {"alibi": {}}
    r = parse_resource(doc)
    text = " | ".join(r.warnings)
    for field in ("spec.transformer", "spec.explainer",
                  "spec.predictor.minReplicas", "spec.predictor.model.resources", "deploymentMode"):
        assert field in text, (field, text)
    assert "canaryTrafficPercent" not in text  # implemented: a traffic split (below)
    plain = parse_resource(with_predictor({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://models/m1"}}))
    assert isinstance(r, InferenceService) and isinstance(plain, InferenceService)
    assert concrete_model_id(r) == concrete_model_id(plain)


def canary(uri: str, percent: int | None) -> InferenceService:
    predictor: dict = {"model": {"modelFormat": {"name": "onnx"}, "storageUri": uri}}
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    r = parse_resource(with_predictor(predictor))
    assert isinstance(r, InferenceService)
    return r


def test_canary_percent_splits_between_the_rolled_out_and_the_new_model_until_promoted() -> None:
    v1, v2 = canary("s3://m/v1", None), canary("s3://m/v2", 10)
    first = translate(canary("s3://m/v1", 10), previous=None, now_ms=0)  # nothing rolled out yet: all to it
    assert first.vmodel is not None and not first.vmodel.split
    assert first.resource.rolled_out_model == concrete_model_id(v1)
    canaried = translate(v2, previous=first.resource, now_ms=1)
    w = canaried.vmodel
    assert w is not None and w.split == {concrete_model_id(v1): 90, concrete_model_id(v2): 10}
    assert w.target_model_id == concrete_model_id(v2) and w.register
    assert canaried.resource.rolled_out_model == concrete_model_id(v1)
    assert translate(v2, previous=canaried.resource, now_ms=2).unchanged
    held = translate(canary("s3://m/v2", 0), previous=canaried.resource, now_ms=3).vmodel
    assert held is not None and held.target_model_id == concrete_model_id(v1) and not held.register
    promoted = translate(canary("s3://m/v2", None), previous=canaried.resource, now_ms=4)
    assert promoted.vmodel is not None and not promoted.vmodel.split
    assert promoted.vmodel.target_model_id == concrete_model_id(v2)
    assert promoted.resource.rolled_out_model == concrete_model_id(v2)
    assert concrete_model_id(canary("s3://m/v2", 50)) == concrete_model_id(v2)  # the percent is not the spec
    with pytest.raises(InvalidArgument, match="canaryTrafficPercent"):
        canary("s3://m/v2", 120)


def test_storage_spec_key_and_parameters_make_the_modelmesh_key() -> None:
    r = parse_resource(with_predictor({"model": {
        "modelFormat": {"name": "onnx", "version": "1"}, "runtime": "triton-runtime",
        "storage": {"key": "minio", "path": "onnx/mnist", "parameters": {"bucket": "models"},
                    "schemaPath": "schema.json"}}}))
    assert isinstance(r, InferenceService)
    w = translate(r, previous=None, now_ms=0).vmodel
    assert w is not None and w.path == "onnx/mnist"
    assert json.loads(w.key) == {"storage_key": "minio", "storage_params": {"bucket": "models"},
                                 "model_type": {"name": "onnx", "version": "1"}, "schema_path": "schema.json"}
    assert w.labels["require.runtime"] == "triton-runtime" and w.labels["kserve.format-version"] == "1"


def test_legacy_framework_field_gives_the_type() -> None:
    r = parse_resource(with_predictor({"sklearn": {"storageUri": "s3://models/iris"}},
                                      annotations={"serving.kserve.io/servingRuntime": "mlserver"}))
    assert isinstance(r, InferenceService) and (r.format, r.runtime) == ("sklearn", "mlserver")


@pytest.mark.parametrize("doc, field", [
    (with_predictor({"model": {"modelFormat": {"name": "onnx"}}}), "storageUri"),
    (with_predictor({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p",
                               "storage": {"path": "p"}}}), "both storageUri and storage.path"),
    (with_predictor({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p"}}, name="Bad_Name"),
     "metadata.name"),
    (with_predictor({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p"}}, name="x" * 64),
     "metadata.name"),
    (with_predictor({"model": {"storageUri": "s3://b/p"}}), "modelFormat"),
    (with_predictor({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "ftp://b/p"}}), "storageUri"),
    (with_predictor({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p"},
                     "sklearn": {"storageUri": "s3://b/p"}}), "both model and sklearn"),
    (with_predictor({"minReplicas": 1}), "spec.predictor.model is required"),
    ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, "kind 'ConfigMap'"),
    ({"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": "x"}},
     "apiVersion"),
    ({"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime", "metadata": {"name": "r"},
      "spec": {"multiModel": True}}, "spec.supportedModelFormats"),
])
def test_invalid_resources_are_refused_naming_the_field(doc: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_resource(doc)
    assert field in str(err.value)


def test_one_invalid_document_refuses_the_whole_file() -> None:
    text = SEED_ISVC + "---\n" + json.dumps(with_predictor({"model": {"modelFormat": {"name": "onnx"}}}))
    with pytest.raises(InvalidArgument) as err:
        parse_manifests(text)
    assert "nothing was applied" in str(err.value) and "document 2" in str(err.value)
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        parse_manifests("kind: [")


def test_json_list_and_multi_document_yaml_are_read() -> None:
    both = parse_manifests(TRITON_RUNTIME + "\n---\n" + SEED_ISVC)
    assert [r.kind for r in both] == ["ServingRuntime", "InferenceService"]
    as_json = parse_manifests(json.dumps([with_predictor({"model": {"modelFormat": {"name": "onnx"},
                                                                    "storageUri": "s3://b/p"}})]))
    assert as_json[0].name == "m1"


def test_deleting_an_inference_service_deletes_its_vmodel_a_runtime_only_its_record() -> None:
    assert deletion("InferenceService", "m1").vmodel_id == "m1"
    assert deletion("ServingRuntime", "triton-runtime").vmodel_id == ""


# -- placement ---------------------------------------------------------------

def runtime(text: str = TRITON_RUNTIME) -> ServingRuntime:
    r = parse_resource(parse_manifests(text)[0].manifest)
    assert isinstance(r, ServingRuntime)
    return r


def inst(iid: str, labels: dict | None = None, types: tuple[str, ...] = ("onnx",)) -> InstanceView:
    return InstanceView(iid, capacity_bytes=10**9, used_bytes=0, model_types=types, labels=labels or {})


def onnx_model(runtime_pin: str = "", version: str = "1") -> ModelView:
    labels = {"kserve.format": "onnx", "kserve.format-version": version}
    required = {}
    if runtime_pin:
        labels["require.runtime"] = runtime_pin
        required = {"runtime": runtime_pin}
    return ModelView("m__isvc-1", "onnx", 1000, required_labels=required, labels=labels)


def test_a_pinned_runtime_places_only_on_instances_labelled_for_it() -> None:
    view = ClusterView((inst("plain"), inst("triton", {"runtime": "triton-runtime"}),
                        inst("other", {"runtime": "mlserver"})), now_ms=0)
    runtimes = pl.runtime_index([runtime()])
    policy = pl.with_serving_runtimes(rank, lambda: runtimes)
    assert policy(view, onnx_model("triton-runtime")) == ["triton"]
    # Without a pin: the auto-selecting runtime's instances and instances of no ServingRuntime.
    assert sorted(policy(view, onnx_model())) == ["other", "plain", "triton"]
    # A version the runtime does not list: only instances outside ServingRuntimes.
    assert sorted(policy(view, onnx_model(version="9"))) == ["other", "plain"]
    # Plain registrations are untouched.
    assert sorted(policy(view, ModelView("plain-model", "onnx", 1000))) == ["other", "plain", "triton"]


def test_support_reasons_as_modelmesh_reports_them() -> None:
    triton = pl.runtime_index([runtime()])
    need = pl.Need("sklearn")
    assert pl.support(need, triton, [inst("t", {"runtime": "triton-runtime"}, ("onnx", "sklearn"))]).reason == \
        pl.NO_SUPPORTING_RUNTIME
    assert pl.support(need, {}, [inst("a", types=("onnx",))]).reason == pl.NO_SUPPORTING_RUNTIME
    assert pl.support(need, {}, [inst("a", types=("sklearn",))]).reason == ""
    assert pl.support(pl.Need("scikit-learn"), {}, [inst("a", types=("sklearn",))]).reason == ""
    assert pl.support(pl.Need("onnx", "1", "nope"), triton, [inst("a")]).reason == pl.RUNTIME_NOT_RECOGNIZED
    waiting = pl.support(pl.Need("onnx", "1", "triton-runtime"), triton, [inst("a")])
    assert waiting.reason == pl.RUNTIME_UNHEALTHY and waiting.waiting and "runtime=triton-runtime" in waiting.message
    assert pl.support(pl.Need("onnx", "1", "triton-runtime"), triton,
                      [inst("t", {"runtime": "triton-runtime"})]).reason == ""
    single = runtime(TRITON_RUNTIME.replace("multiModel: true", "multiModel: false"))
    assert pl.support(pl.Need("onnx", "1", "triton-runtime"), {"triton-runtime": single},
                      [inst("t", {"runtime": "triton-runtime"})]).reason == pl.RUNTIME_NOT_RECOGNIZED
    assert any("multiModel" in w for w in single.warnings)


def test_runtime_names_may_hold_dots_inference_service_names_may_not() -> None:
    r = runtime(TRITON_RUNTIME.replace("name: triton-runtime", "name: mlserver-1.x"))
    assert r.name == "mlserver-1.x"
    with pytest.raises(InvalidArgument, match="metadata.name"):
        parse_resource(with_predictor({"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p"}},
                                      name="iris-1.x"))


def test_a_namespaced_runtime_wins_over_a_cluster_runtime_of_the_same_name() -> None:
    cluster = runtime(TRITON_RUNTIME.replace("kind: ServingRuntime", "kind: ClusterServingRuntime")
                      .replace("name: onnx", "name: xgboost"))
    ns = runtime()
    assert pl.runtime_index([ns, cluster])["triton-runtime"] is ns
    assert pl.runtime_index([cluster])["triton-runtime"] is cluster


# -- status ------------------------------------------------------------------

def model_info(status: int, copies: tuple[int, ...] = (), errors: tuple[str, ...] = ()) -> mm.ModelStatusInfo:
    return MS(status=status, errors=list(errors), modelCopyInfos=[
        MS.ModelCopyInfo(location=f"rt{i}", copyStatus=c, time=1) for i, c in enumerate(copies)])


def vmodel(status: int, active: mm.ModelStatusInfo, target: mm.ModelStatusInfo | None = None) -> mm.VModelStatusInfo:
    return VS(status=status, activeModelId="m__isvc-a", targetModelId="m__isvc-b" if target else "m__isvc-a",
              activeModelStatus=active, targetModelStatus=target or active, owner="isvc")


URLS = {"grpc_url": "grpc://127.0.0.1:8033", "rest_url": "http://127.0.0.1:8008"}


def conditions(st: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in st["conditions"]}


def test_loaded_is_ready_with_urls() -> None:
    st = isvc_status(vmodel(VS.DEFINED, model_info(MS.LOADED, (MS.LOADED,))), pl.Support(), **URLS)
    assert conditions(st) == {"PredictorReady": "True", "Ready": "True"}
    assert st["url"] == "grpc://127.0.0.1:8033"
    assert st["components"]["predictor"] == {"url": "grpc://127.0.0.1:8033", "grpcUrl": "grpc://127.0.0.1:8033",
                                             "restUrl": "http://127.0.0.1:8008", "traffic": [
                                                 {"revisionName": "m__isvc-a", "percent": 100,
                                                  "latestRevision": True}]}
    assert st["modelStatus"] == {"transitionStatus": "UpToDate", "states": {"activeModelState": "Loaded"},
                                 "copies": {"failedCopies": 0, "totalCopies": 1}}


def test_transition_shows_both_states_and_stays_ready() -> None:
    st = isvc_status(vmodel(VS.TRANSITIONING, model_info(MS.LOADED, (MS.LOADED,)),
                            model_info(MS.LOADING, (MS.LOADING,))), pl.Support(), **URLS)
    assert st["modelStatus"]["transitionStatus"] == "InProgress"
    assert st["modelStatus"]["states"] == {"activeModelState": "Loaded", "targetModelState": "Loading"}
    assert conditions(st)["Ready"] == "True"


def test_no_supporting_runtime_is_failed_to_load() -> None:
    verdict = pl.Support(pl.NO_SUPPORTING_RUNTIME, "No ServingRuntime supports specified model type")
    st = isvc_status(vmodel(VS.DEFINED, model_info(MS.NOT_LOADED)), verdict, **URLS)
    assert st["modelStatus"]["states"]["activeModelState"] == "FailedToLoad"
    assert st["modelStatus"]["lastFailureInfo"]["reason"] == "NoSupportingRuntime"
    assert st["modelStatus"]["lastFailureInfo"]["modelRevisionName"] == "m__isvc-a"
    assert conditions(st)["Ready"] == "False" and "url" not in st
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert ready["reason"] == "NoSupportingRuntime"


def test_waiting_for_a_runtime_is_loading() -> None:
    st = isvc_status(vmodel(VS.DEFINED, model_info(MS.NOT_LOADED)), pl.Support(pl.RUNTIME_UNHEALTHY, "waiting"),
                     **URLS)
    assert st["modelStatus"]["states"]["activeModelState"] == "Loading"
    assert st["modelStatus"]["lastFailureInfo"]["reason"] == "RuntimeUnhealthy"


def test_failed_loads_and_a_blocked_transition() -> None:
    failed = model_info(MS.LOADING_FAILED, errors=("rt0: bad file", "rt1: bad file", "rt2: bad file"))
    st = isvc_status(vmodel(VS.TRANSITION_FAILED, model_info(MS.LOADED, (MS.LOADED,)), failed), pl.Support(), **URLS)
    ms = st["modelStatus"]
    assert ms["transitionStatus"] == "BlockedByFailedLoad"
    assert ms["states"] == {"activeModelState": "Loaded", "targetModelState": "FailedToLoad"}
    assert ms["lastFailureInfo"] == {"reason": "ModelLoadFailed", "message": "rt0: bad file",
                                     "modelRevisionName": "m__isvc-b"}
    assert ms["copies"] == {"failedCopies": 3, "totalCopies": 3}
    assert conditions(st)["Ready"] == "True"  # the old model still serves


def test_a_live_canary_split_shows_as_traffic() -> None:
    v = vmodel(VS.DEFINED, model_info(MS.LOADED, (MS.LOADED,)))
    v.trafficSplit.add(modelId="m__isvc-a", weight=90, live=True)
    v.trafficSplit.add(modelId="m__isvc-b", weight=10, live=True)
    st = isvc_status(v, pl.Support(), latest_model="m__isvc-b", **URLS)
    assert st["components"]["predictor"]["traffic"] == [
        {"revisionName": "m__isvc-a", "percent": 90, "latestRevision": False},
        {"revisionName": "m__isvc-b", "percent": 10, "latestRevision": True}]
    assert st["components"]["predictor"]["latestCreatedRevision"] == "m__isvc-b"


def test_no_vmodel_is_pending() -> None:
    st = isvc_status(VS(status=VS.NOT_FOUND), pl.Support(), **URLS)
    assert st["modelStatus"]["states"]["activeModelState"] == "Pending"
    assert conditions(st)["Ready"] == "False"
