"""Wire compatibility with ModelMesh and freshness of the generated code."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from mesh.proto import codegen
from mesh.proto.meshserve.v1 import admin_pb2
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_runtime_pb2 as mr


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    codegen.generate(tmp_path)
    root = codegen.repo_root()
    for proto in codegen.PROTO_FILES:
        stem = proto[: -len(".proto")]
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
            fresh, committed = tmp_path / (stem + suffix), root / (stem + suffix)
            assert filecmp.cmp(fresh, committed, shallow=False), (
                f"{committed} is stale: run python -m mesh.proto.codegen"
            )


def fields(msg) -> dict[str, int]:
    return {f.name: f.number for f in msg.DESCRIPTOR.fields}


def test_model_mesh_service_matches_modelmesh() -> None:
    svc = mm.DESCRIPTOR.services_by_name["ModelMesh"]
    assert svc.full_name == "mmesh.ModelMesh"
    assert {m.name: (m.input_type.name, m.output_type.name) for m in svc.methods} == {
        "registerModel": ("RegisterModelRequest", "ModelStatusInfo"),
        "unregisterModel": ("UnregisterModelRequest", "UnregisterModelResponse"),
        "getModelStatus": ("GetStatusRequest", "ModelStatusInfo"),
        "ensureLoaded": ("EnsureLoadedRequest", "ModelStatusInfo"),
        "setVModel": ("SetVModelRequest", "VModelStatusInfo"),
        "deleteVModel": ("DeleteVModelRequest", "DeleteVModelResponse"),
        "getVModelStatus": ("GetVModelStatusRequest", "VModelStatusInfo"),
    }
    assert fields(mm.RegisterModelRequest) == {"modelId": 1, "modelInfo": 2, "loadNow": 3, "sync": 4, "lastUsedTime": 5}
    assert fields(mm.ModelInfo) == {"type": 1, "path": 2, "key": 3}
    assert fields(mm.ModelStatusInfo) == {"status": 1, "errors": 2, "modelCopyInfos": 3}
    assert fields(mm.ModelStatusInfo.ModelCopyInfo) == {"location": 1, "copyStatus": 2, "time": 3}
    assert dict(mm.ModelStatusInfo.ModelStatus.items()) == {
        "NOT_FOUND": 0, "NOT_LOADED": 1, "LOADING": 2, "LOADED": 3, "LOADING_FAILED": 4, "UNKNOWN": 5}
    assert fields(mm.EnsureLoadedRequest) == {"modelId": 1, "lastUsedTime": 2, "sync": 4}
    assert fields(mm.SetVModelRequest) == {
        "vModelId": 1, "targetModelId": 2, "updateOnly": 3, "modelInfo": 4, "autoDeleteTargetModel": 5,
        "loadNow": 6, "force": 7, "sync": 8, "expectedTargetModelId": 9, "owner": 10}
    assert fields(mm.VModelStatusInfo) == {
        "status": 1, "activeModelId": 2, "targetModelId": 3, "activeModelStatus": 4, "targetModelStatus": 5, "owner": 6,
        # meshserve's extension, far from ModelMesh's numbers: its clients skip it.
        "trafficSplit": 100}
    assert dict(mm.VModelStatusInfo.VModelStatus.items()) == {
        "NOT_FOUND": 0, "DEFINED": 1, "TRANSITIONING": 2, "TRANSITION_FAILED": 3, "UNKNOWN": 5}
    assert fields(mm.DeleteVModelRequest) == {"vModelId": 1, "owner": 2}
    assert fields(mm.GetVModelStatusRequest) == {"vModelId": 1, "owner": 2}
    assert fields(mm.UnregisterModelRequest) == {"modelId": 1}
    assert fields(mm.GetStatusRequest) == {"modelId": 1}


def test_model_runtime_spi_matches_modelmesh() -> None:
    svc = mr.DESCRIPTOR.services_by_name["ModelRuntime"]
    assert svc.full_name == "mmesh.ModelRuntime"
    assert [m.name for m in svc.methods] == [
        "loadModel", "unloadModel", "predictModelSize", "modelSize", "runtimeStatus"]
    for msg in (mr.LoadModelRequest, mr.PredictModelSizeRequest):
        assert fields(msg) == {"modelId": 1, "modelType": 2, "modelPath": 3, "modelKey": 4}
    assert fields(mr.LoadModelResponse) == {"sizeInBytes": 1, "maxConcurrency": 2}
    assert fields(mr.RuntimeStatusResponse) == {
        "status": 1, "capacityInBytes": 2, "maxLoadingConcurrency": 3, "modelLoadingTimeoutMs": 4,
        "defaultModelSizeInBytes": 5, "runtimeVersion": 6, "numericRuntimeVersion": 7, "methodInfos": 8,
        "limitModelConcurrency": 9, "allowAnyMethod": 10}
    assert dict(mr.RuntimeStatusResponse.Status.items()) == {"STARTING": 0, "READY": 1, "FAILING": 2}
    assert fields(mr.RuntimeStatusResponse.MethodInfo) == {"idInjectionPath": 1}


def test_admin_service_methods() -> None:
    svc = admin_pb2.DESCRIPTOR.services_by_name["MeshAdmin"]
    assert svc.full_name == "meshserve.v1.MeshAdmin"
    assert [m.name for m in svc.methods] == [
        "ListModels", "GetClusterStatus", "GetPolicy", "SetPolicy", "DrainInstance", "SetModelConfig", "SetTrafficSplit",
        "ApplyResources", "GetResources", "DeleteResources"]


def test_kserve_v2_comes_from_tritonclient() -> None:
    from tritonclient.grpc import service_pb2

    assert service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name == (
        "inference.GRPCInferenceService")
