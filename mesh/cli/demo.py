"""The local mesh demo (`meshserve up --demo`, the README's first command).

Generates real ONNX models, registers them through the ModelMesh API, sends
inference through the router's single endpoint, checks every answer against a
NumPy reference, and shows where models were placed and what was evicted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh import modelgen
from mesh.cli.local_mesh import LocalMesh
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc

N_MODELS = 12
MODEL_BYTES = 2 * 2**20
STATUS = mm.ModelStatusInfo.ModelStatus.Name


def _request(model_id: str, x: np.ndarray) -> v2.ModelInferRequest:
    req = v2.ModelInferRequest(model_name=model_id)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    return req


async def run_demo(local: LocalMesh) -> int:
    assert local.data_dir is not None
    models_dir = Path(local.data_dir) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    print(f"\n1. generating {N_MODELS} ONNX models (~{MODEL_BYTES // 2**20} MiB each) in {models_dir}")
    specs = {}
    loop = asyncio.get_running_loop()
    for i in range(N_MODELS):
        spec = modelgen.spec_for_bytes(MODEL_BYTES, seed=i)
        path = models_dir / f"mlp-{i:02d}.onnx"
        await loop.run_in_executor(None, modelgen.write_onnx_mlp, spec, path)
        specs[f"demo/mlp-{i:02d}"] = (spec, path)

    from mesh.security.tls import aio_channel, channel_tls

    channel = aio_channel(local.endpoint, channel_tls(local.client_ca, "", ""))
    mesh = mm_grpc.ModelMeshStub(channel)
    infer = v2_grpc.GRPCInferenceServiceStub(channel)
    admin = adm_grpc.MeshAdminStub(channel)
    try:
        print(f"2. registering them with the router at {local.endpoint} (ModelMesh registerModel)")
        for model_id, (_, path) in specs.items():
            await mesh.registerModel(mm.RegisterModelRequest(
                modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=f"file://{path}")))

        print("3. one inference per model through the single endpoint (each loads on first use)")
        print(f"   {'model':<14} {'output[0][:3]':<34} {'check':<6} {'ms':>7}")
        ok = 0
        for model_id, (spec, _) in specs.items():
            x = modelgen.sample_input(spec, batch=2, seed=7)
            t0 = loop.time()
            resp = await infer.ModelInfer(_request(model_id, x), timeout=120)
            ms = (loop.time() - t0) * 1000
            out = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).reshape(list(resp.outputs[0].shape))
            good = np.allclose(out, modelgen.reference_output(spec, x), rtol=1e-4, atol=1e-4)
            ok += good
            print(f"   {model_id:<14} {np.array2string(out[0][:3], precision=4):<34} {'ok' if good else 'WRONG':<6} {ms:7.1f}")

        await asyncio.sleep(1.2)  # runtimes refresh their instance records once a second
        print("\n4. where the models live (MeshAdmin GetClusterStatus)")
        cluster = await admin.GetClusterStatus(adm.GetClusterStatusRequest())
        for inst in cluster.instances:
            print(f"   {inst.instance_id:<10} {inst.used_bytes / 2**20:6.1f} / {inst.capacity_bytes / 2**20:6.1f} MiB  "
                  f"{', '.join(inst.model_ids) or '-'}")

        print("\n5. model status (least recently used models were evicted to make room)")
        evicted = 0
        for model_id in specs:
            st = await mesh.getModelStatus(mm.GetStatusRequest(modelId=model_id))
            where = ", ".join(c.location for c in st.modelCopyInfos) or "-"
            evicted += st.status == mm.ModelStatusInfo.NOT_LOADED
            print(f"   {model_id:<14} {STATUS(st.status):<11} {where}")

        first = next(iter(specs))
        spec, _ = specs[first]
        x = modelgen.sample_input(spec, batch=1, seed=3)
        resp = await infer.ModelInfer(_request(first, x), timeout=120)
        out = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32)
        st = await mesh.getModelStatus(mm.GetStatusRequest(modelId=first))
        print(f"\n6. {first} again: reloaded on {', '.join(c.location for c in st.modelCopyInfos)}, "
              f"output {np.array2string(out[:3], precision=4)}")

        print(f"\n{ok}/{len(specs)} answers matched the NumPy reference; {evicted} model(s) evicted at step 5.")
        print("Try it yourself: `meshserve up` (router on 127.0.0.1:8033), then in another terminal "
              "`meshserve register NAME --type onnx --path FILE`, `meshserve infer NAME --input '[[...]]'`, "
              "`meshserve models`, `meshserve cluster`.")
        return 0 if ok == len(specs) else 1
    finally:
        await channel.close()
