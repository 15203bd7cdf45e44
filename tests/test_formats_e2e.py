"""scikit-learn, XGBoost, LightGBM and plugin models through the router to real runtimes.

Two meshes on the shared etcd, each with one real runtime process and an
in-process router per test:

- ``trusting``: ``--allow-pickle``, every built-in type, a plugin package pip-installed
  into a temporary folder on its PYTHONPATH (entry point ``scale``) and the same
  class allowed as a ``module:Class`` type (``--custom-model-types``);
- ``strict``: scikit-learn only, no pickle.

Every answer is compared with what the library itself predicts for the same rows
from the same file (mesh/modelgen_tabular.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh import modelgen_tabular as mt
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from mesh.runtime.tensors import decode_outputs, encode_inputs_raw
from router.server import RouterServer
from router.settings import RouterSettings
from tests.procs import ROOT, RuntimeProc, start_runtime
from mesh.registry import records as rec

PLUGIN_SRC = Path(__file__).parent / "data" / "scale_plugin"
PLUGIN_CLASS = "meshserve_scale_plugin.models:Scale"
#: What the plugin's size_bytes() claims (tests/data/scale_plugin).
CLAIMED_BYTES = 3_000_000


@dataclass
class Mesh:
    name: str
    runtime: RuntimeProc


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, mt.TabularModel]:
    root = tmp_path_factory.mktemp("tabular")
    return {
        "iris-joblib": mt.write_sklearn_iris(root / "iris-joblib"),
        "iris-skops": mt.write_sklearn_iris(root / "iris-skops", file_name="model.skops"),
        "iris-proba": mt.write_sklearn_iris(root / "iris-proba", file_name="model.skops", proba=True,
                                            key={"method": "predict_proba"}),
        "xgb-classifier": mt.write_xgboost(root / "xgb-c" / "model.json"),
        "xgb-regressor": mt.write_xgboost(root / "xgb-r.ubj", task="regressor"),
        "xgb-bst": mt.write_xgboost(root / "xgb.bst", seed=3),
        "lgb-classifier": mt.write_lightgbm(root / "lgb-c" / "model.txt"),
        "lgb-regressor": mt.write_lightgbm(root / "lgb-r.lgb", task="regressor"),
        "forest-skops": mt.write_sklearn(root / "forest" / "model.skops", size="large"),
    }


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package, really installed (pip, entry point metadata) into a temp folder."""
    src = tmp_path_factory.mktemp("plugin-src") / "scale_plugin"
    shutil.copytree(PLUGIN_SRC, src)  # the build writes into its source tree: keep the repo clean
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, timeout=300)
    return target


@pytest.fixture(scope="module")
def trusting(etcd_server, plugin_dir: Path) -> Iterator[Mesh]:
    name = f"fmt-{uuid.uuid4().hex[:8]}"
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_dir), str(ROOT)]), "MESHSERVE_LEASE_TTL_S": "3"}
    with start_runtime(etcd_server.endpoint, name, capacity="2Gi", env=env,
                       extra_args=["--allow-pickle", "--custom-model-types", PLUGIN_CLASS,
                                   "--instance-id", "trusting"]) as rt:
        yield Mesh(name, rt)


@pytest.fixture(scope="module")
def strict(etcd_server) -> Iterator[Mesh]:
    name = f"fmt-{uuid.uuid4().hex[:8]}"
    env = {"MESHSERVE_MODEL_TYPES": "sklearn", "MESHSERVE_LEASE_TTL_S": "3"}
    with start_runtime(etcd_server.endpoint, name, capacity="1Gi", env=env,
                       extra_args=["--instance-id", "strict"]) as rt:
        yield Mesh(name, rt)


class Client:
    def __init__(self, router: RouterServer) -> None:
        self.router = router
        self.channel = grpc.aio.insecure_channel(router.endpoint)
        self.mesh = mm_grpc.ModelMeshStub(self.channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)

    async def register(self, model_id: str, model_type: str, path: Path, key: dict[str, Any] | None = None) -> None:
        await self.mesh.registerModel(mm.RegisterModelRequest(
            modelId=model_id, modelInfo=mm.ModelInfo(type=model_type, path=str(path), key=json.dumps(key or {}))))

    async def infer(self, model_id: str, x: np.ndarray, *, input_name: str = "input-0",
                    outputs: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        req = v2.ModelInferRequest(model_name=model_id)
        encode_inputs_raw(req, {input_name: x})
        for name in outputs:
            req.outputs.add(name=name)
        return decode_outputs(await self.v2.ModelInfer(req, timeout=60))


@contextlib.asynccontextmanager
async def client_for(etcd_server, mesh: Mesh) -> AsyncIterator[Client]:
    """An in-process router on the mesh, and a client of it."""
    router = RouterServer(RouterSettings(etcd=etcd_server.endpoint, mesh=mesh.name, listen="127.0.0.1:0",
                                         scale_interval_s=3600))
    await router.start()  # its mirror is loaded, the runtime's record included
    assert mesh.runtime.instance_id in router.mirror.instances
    client = Client(router)
    try:
        yield client
    finally:
        await client.channel.close()
        await router.stop(0)


def record_of(client: Client, mesh: Mesh) -> rec.InstanceRecord:
    return client.router.mirror.instances[mesh.runtime.instance_id]


@pytest.fixture
async def trusted_client(etcd_server, trusting: Mesh) -> AsyncIterator[Client]:
    async with client_for(etcd_server, trusting) as client:
        yield client


@pytest.fixture
async def strict_client(etcd_server, strict: Mesh) -> AsyncIterator[Client]:
    async with client_for(etcd_server, strict) as client:
        yield client


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_iris_svc_in_a_kserve_folder_predicts_as_sklearn_does(trusted_client: Client, models) -> None:
    iris = models["iris-joblib"]
    mid = _id("sklearn-iris")
    await trusted_client.register(mid, "SKLearn", iris.path)  # KServe's spelling, any case
    out = await trusted_client.infer(mid, iris.x)
    assert list(out) == ["predict"] and out["predict"].dtype == np.int64
    assert out["predict"].tolist() == [1, 1] == iris.expected["predict"].tolist()


@pytest.mark.parametrize("name", ["xgb-classifier", "xgb-regressor", "xgb-bst", "lgb-classifier", "lgb-regressor"])
async def test_boosters_answer_what_the_library_predicts(trusted_client: Client, models, name: str) -> None:
    model = models[name]
    mid = _id(name)
    await trusted_client.register(mid, model.model_type, model.path)
    out = await trusted_client.infer(mid, model.x)
    expected = model.expected["predict"]
    assert out["predict"].dtype == expected.dtype and out["predict"].shape == expected.shape
    assert np.array_equal(out["predict"], expected)
    if "classifier" in name:  # class probabilities, as KServe's xgbserver / lgbserver return them
        assert out["predict"].shape == (len(model.x), 3) and np.allclose(out["predict"].sum(axis=1), 1, atol=1e-5)


async def test_skops_model_predict_proba_through_the_key_and_labels_by_name(trusted_client: Client, models) -> None:
    model = models["iris-proba"]
    mid = _id("iris-proba")
    await trusted_client.register(mid, "scikit-learn", model.path, model.key)
    proba = await trusted_client.infer(mid, model.x)
    assert list(proba) == ["predict_proba"] and np.array_equal(proba["predict_proba"], model.expected["predict_proba"])
    # The labels are the second output; FP64 rows and MLServer's input name are taken as they are.
    both = await trusted_client.infer(mid, model.x.astype(np.float64), input_name="predict",
                                      outputs=("predict", "predict_proba"))
    assert both["predict"].tolist() == model.expected["predict"].tolist()
    assert both["predict_proba"].shape == (2, 3)


async def test_wrong_feature_count_is_invalid_argument_naming_the_shape(trusted_client: Client, models) -> None:
    iris = models["iris-joblib"]
    mid = _id("iris-shape")
    await trusted_client.register(mid, "sklearn", iris.path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trusted_client.infer(mid, np.zeros((2, 3), np.float32))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[-1, 4]" in err.value.details() and "[2, 3]" in err.value.details()


@pytest.mark.parametrize("fmt, model_type, file_name, content, reason", [
    ("joblib", "sklearn", "model.joblib", b"\x80\x04not a pickle at all", "not a loadable joblib/pickle file"),
    ("skops", "sklearn", "model.skops", b"PK\x03\x04 truncated", "File is not a zip file"),
    ("xgboost", "xgboost", "model.json", b'{"learner": ', "not a loadable XGBoost model"),
    ("lightgbm", "lightgbm", "model.txt", b"garbage\n", "Unknown model format"),
])
async def test_a_corrupt_file_fails_its_load_with_the_library_reason_and_the_runtime_serves_on(
        trusted_client: Client, trusting: Mesh, models, tmp_path: Path, fmt: str, model_type: str,
        file_name: str, content: bytes, reason: str) -> None:
    folder = tmp_path / fmt
    folder.mkdir()
    (folder / file_name).write_bytes(content)
    mid = _id(f"corrupt-{fmt}")
    await trusted_client.register(mid, model_type, folder)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trusted_client.infer(mid, np.zeros((1, 4), np.float32))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # the model's fault, not the server's
    assert reason in err.value.details() and file_name in err.value.details() and mid in err.value.details()
    assert trusting.runtime.running
    iris = models["iris-skops"]
    good = _id("after-corrupt")
    await trusted_client.register(good, "sklearn", iris.path)
    assert (await trusted_client.infer(good, iris.x))["predict"].tolist() == [1, 1]


async def test_pickle_is_refused_without_allow_pickle_and_the_runtime_stays_healthy(
        strict_client: Client, strict: Mesh, models) -> None:
    mid = _id("pickled")
    await strict_client.register(mid, "sklearn", models["iris-joblib"].path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await strict_client.infer(mid, models["iris-joblib"].x)
    msg = err.value.details()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.joblib" in msg and "--allow-pickle" in msg and "MESHSERVE_ALLOW_PICKLE" in msg and ".skops" in msg
    status = await strict_client.mesh.getModelStatus(mm.GetStatusRequest(modelId=mid))
    assert status.status != mm.ModelStatusInfo.LOADED and any("is a pickle" in e for e in status.errors)
    # The same model saved with skops loads there without any trust setting.
    assert strict.runtime.running
    safe = _id("skops-on-strict")
    await strict_client.register(safe, "sklearn", models["iris-skops"].path)
    assert (await strict_client.infer(safe, models["iris-skops"].x))["predict"].tolist() == [1, 1]


async def test_skops_types_not_trusted_are_refused_naming_them_and_the_setting(strict_client: Client, models) -> None:
    forest = models["forest-skops"]
    mid = _id("forest")
    await strict_client.register(mid, "sklearn", forest.path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await strict_client.infer(mid, forest.x)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sklearn.tree._tree.Tree" in err.value.details() and "MESHSERVE_SKOPS_TRUSTED_TYPES" in err.value.details()


async def test_a_type_no_runtime_serves_is_failed_precondition_naming_type_and_runtimes(
        strict_client: Client, strict: Mesh, models) -> None:
    assert record_of(strict_client, strict).model_types == ("sklearn",)
    mid = _id("xgb-on-strict")
    await strict_client.register(mid, "XGBoost", models["xgb-classifier"].path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await strict_client.infer(mid, models["xgb-classifier"].x)
    msg = err.value.details()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'XGBoost'" in msg and "strict (sklearn)" in msg


async def test_installed_plugin_and_allowed_module_class_types_serve_a_custom_model(
        trusted_client: Client, trusting: Mesh, tmp_path: Path) -> None:
    types = set(record_of(trusted_client, trusting).model_types)
    assert {"onnx", "pytorch", "sklearn", "xgboost", "lightgbm", "scale", PLUGIN_CLASS} <= types
    (tmp_path / "scale.json").write_text(json.dumps({"factor": 2.5}))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for model_type in ("Scale", PLUGIN_CLASS):  # the entry point's name (any case), the class path
        mid = _id("scaled")
        await trusted_client.register(mid, model_type, tmp_path)
        out = await trusted_client.infer(mid, x, input_name="x")
        assert np.array_equal(out["y"], x * 2.5)
        copies = trusted_client.router.mirror.copies.get(mid, {})
        assert copies and all(c.size_bytes >= CLAIMED_BYTES for c in copies.values())
    # A class path the runtime does not allow is not served anywhere.
    mid = _id("not-allowed")
    await trusted_client.register(mid, "meshserve_scale_plugin.models:Other", tmp_path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trusted_client.infer(mid, x, input_name="x")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no runtime serves" in err.value.details()


async def test_small_sklearn_models_are_predicted_with_their_own_overhead(strict: Mesh, models) -> None:
    from mesh.fetcher import disk_size
    from mesh.proto.mmesh import model_runtime_pb2 as rpb
    from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg

    iris = models["iris-skops"]
    async with grpc.aio.insecure_channel(strict.runtime.endpoint) as ch:
        size = (await rpg.ModelRuntimeStub(ch).predictModelSize(rpb.PredictModelSizeRequest(
            modelId="size-probe", modelType="sklearn", modelPath=str(iris.path)), timeout=30)).sizeInBytes
    # 1.5 x file + 24 KiB (not the 64 KiB ONNX Runtime sessions cost): ~25 KB held per iris SVC.
    assert size == int(disk_size(iris.path) * 1.5) + 24 * 1024
