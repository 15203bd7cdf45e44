"""etcd unreachable: loaded models keep serving; registrations fail with UNAVAILABLE."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mesh.etcd_server import LocalEtcd
from mesh.proto.mmesh import model_mesh_pb2 as mm
from tests.test_e2e import TEN_TINY, Client, start_router, start_runtimes


async def test_loaded_models_keep_serving_while_etcd_is_down(tmp_path, mesh_name, model_files) -> None:
    etcd = LocalEtcd(tmp_path / "etcd")
    etcd.start()
    procs = start_runtimes(etcd.endpoint, mesh_name, 2, TEN_TINY)
    router = await start_router(etcd, mesh_name, 2)
    client = Client(router.endpoint)
    try:
        files = model_files[:4]
        ids = await client.register_all(files)
        for mid, (spec, _) in zip(ids, files):
            assert (await client.infer(mid, spec))[1]
        etcd.stop(kill=True)
        for _ in range(3):  # several seconds of traffic with no registry
            for mid, (spec, _) in zip(ids, files):
                name, ok = await client.infer(mid, spec)
                assert name == mid and ok
            await asyncio.sleep(1.0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.mesh.registerModel(mm.RegisterModelRequest(
                modelId="during-outage", modelInfo=mm.ModelInfo(type="onnx", path=str(files[0][1]))))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert etcd.endpoint in err.value.details()
        # etcd back: registrations work again, and the new model serves.
        etcd.start()
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                await client.mesh.registerModel(mm.RegisterModelRequest(
                    modelId="after-outage", modelInfo=mm.ModelInfo(type="onnx", path=str(files[0][1]))))
                break
            except grpc.aio.AioRpcError as e:
                assert asyncio.get_running_loop().time() < deadline, f"registrations never came back: {e.details()}"
                await asyncio.sleep(0.2)
        assert (await client.infer("after-outage", files[0][0]))[1]
    finally:
        await client.channel.close()
        await router.stop(0)
        for p in procs:
            p.kill()
        etcd.cleanup()
