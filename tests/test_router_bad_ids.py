"""Bad ids through the router: INVALID_ARGUMENT naming the offending characters, nothing stored."""

from __future__ import annotations

import grpc

from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.mmesh import model_mesh_pb2 as mm
from tests.router_support import MiniMesh, rpc_error
from tests.router_support import mini  # noqa: F401 - the fixture


async def test_bad_ids_are_refused_naming_the_characters_and_nothing_is_written(mini: MiniMesh) -> None:
    await mini.runtimes(1)
    router, client = await mini.router()
    info = mm.ModelInfo(type="onnx", path="/m.onnx")
    err = await rpc_error(client.mesh.registerModel(mm.RegisterModelRequest(modelId="team a/m*1", modelInfo=info)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "' ', '*'" in err.details() and "use letters, digits and . _ : @ + = / -" in err.details()
    err = await rpc_error(client.mesh.setVModel(mm.SetVModelRequest(vModelId="v?", targetModelId="ok", modelInfo=info)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'?'" in err.details()
    assert mini.registry is not None
    store, keys = mini.registry.store, mini.registry.keys
    assert (await store.list(keys.models)).items == [] and (await store.list(keys.vmodels)).items == []
    assert list((await client.admin.ListModels(adm.ListModelsRequest())).models) == []
