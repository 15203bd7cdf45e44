"""Model-type names, settings, tensor leniency and backend selection (no processes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as v2

from mesh import modelgen_tabular as mt
from mesh.errors import FailedPrecondition, InvalidArgument, ModelLoadFailed, ModelLoadRefused
from mesh.model_types import canonical_model_type
from mesh.policy.view import ClusterView, InstanceView
from mesh.registry import records as rec
from mesh.runtime.backends import BackendRegistry
from mesh.runtime.backends.base import find_model_file
from mesh.runtime.backends.plugin import CustomModel, PluginBackend
from mesh.runtime.backends.sklearn import SklearnBackend
from mesh.runtime.settings import RuntimeSettings
from mesh.runtime.tensors import decode_inputs, encode_inputs_raw
from router.loader import no_type_error


@pytest.mark.parametrize("written, canonical", [
    ("sklearn", "sklearn"), ("SKLearn", "sklearn"), ("scikit-learn", "sklearn"), (" XGBoost ", "xgboost"),
    ("LightGBM", "lightgbm"), ("lgbm", "lightgbm"), ("ONNX", "onnx"), ("onnxruntime_onnx", "onnx"),
    ("PyTorch", "pytorch"), ("pytorch_libtorch", "pytorch"), ("My.Pkg:Model", "My.Pkg:Model"),
])
def test_model_type_names_as_kserve_and_modelmesh_users_write_them(written: str, canonical: str) -> None:
    assert canonical_model_type(written) == canonical


def test_runtime_settings_take_type_names_in_any_spelling_and_refuse_unknown_ones() -> None:
    assert RuntimeSettings(model_types="SKLearn, xgb").model_types == ("sklearn", "xgboost")
    assert RuntimeSettings().model_types == () and RuntimeSettings().allow_pickle is False
    with pytest.raises(ValueError, match="unknown model type tensorflow"):
        RuntimeSettings(model_types="onnx,tensorflow")
    with pytest.raises(ValueError, match="package.module:Class"):
        RuntimeSettings(custom_model_types="not_a_class_path")
    assert RuntimeSettings(allow_pickle="true", skops_trusted_types="a.B,c.D").skops_trusted_types == ("a.B", "c.D")


def test_a_custom_class_path_that_does_not_import_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="does not import"):
        BackendRegistry.default(custom_model_types=("no_such_module_here:Model",))
    with pytest.raises(ValueError, match="not a subclass"):
        BackendRegistry.default(custom_model_types=("pathlib:Path",))


class _MissingLibrary:
    """A backend whose framework is not installed (the real Backend interface)."""

    model_type = "xgboost"

    def available(self) -> None:
        raise ImportError("No module named 'xgboost'")

    def load(self, model_id: str, path: Path, key: dict, device: str) -> None:
        raise AssertionError("never loaded")


def test_a_backend_whose_library_does_not_import_is_not_advertised(caplog: pytest.LogCaptureFixture) -> None:
    registry = BackendRegistry([SklearnBackend(), _MissingLibrary()])  # type: ignore[list-item]
    registry.prepare()
    assert registry.model_types == ("sklearn",)
    assert "meshserve[xgboost]" in caplog.text
    with pytest.raises(InvalidArgument, match="unknown model type 'XGBoost': this runtime loads sklearn"):
        registry.get("XGBoost")


def test_tabular_inputs_take_fp64_and_any_single_input_name(tmp_path: Path) -> None:
    model = mt.write_sklearn_iris(tmp_path)
    loaded = SklearnBackend(allow_pickle=True).load("iris", tmp_path, {}, "cpu")
    req = v2.ModelInferRequest(model_name="iris")
    encode_inputs_raw(req, {"predict": model.x.astype(np.float64)})
    inputs = decode_inputs(req, loaded.signature, "iris")
    assert inputs["input-0"].dtype == np.float64
    assert loaded.infer(inputs, ())["predict"].tolist() == [1, 1]
    bad = v2.ModelInferRequest(model_name="iris")
    encode_inputs_raw(bad, {"x": model.x.astype(np.int32)})
    with pytest.raises(InvalidArgument, match="expected datatype FP32 or FP64, got INT32"):
        decode_inputs(bad, loaded.signature, "iris")


def test_pickles_are_refused_unless_allowed_and_the_refusal_says_what_to_do(tmp_path: Path) -> None:
    mt.write_sklearn_iris(tmp_path)
    with pytest.raises(ModelLoadRefused) as err:
        SklearnBackend().load("iris", tmp_path, {}, "cpu")
    assert err.value.code == "FAILED_PRECONDITION"
    assert all(s in err.value.message for s in ("model.joblib", "--allow-pickle", "MESHSERVE_ALLOW_PICKLE", ".skops"))


def test_a_folder_is_searched_for_the_preferred_names_in_order(tmp_path: Path) -> None:
    for name in ("model.pkl", "model.skops", "other.joblib"):
        (tmp_path / name).write_bytes(b"x")
    prefs = ("model.joblib", "model.skops", "model.pkl")
    assert find_model_file("m", tmp_path, (".joblib", ".skops", ".pkl"), prefs).name == "model.skops"
    with pytest.raises(ModelLoadFailed, match="3 model files"):
        find_model_file("m", tmp_path, (".joblib", ".skops", ".pkl"), ("model.joblib",))


def test_the_key_method_must_be_one_the_model_has(tmp_path: Path) -> None:
    mt.write_sklearn_iris(tmp_path, file_name="model.skops")
    with pytest.raises(ModelLoadFailed, match="asks for predict_proba but the SVC"):
        SklearnBackend().load("iris", tmp_path, {"method": "predict_proba"}, "cpu")
    with pytest.raises(ModelLoadFailed, match="method 'transform' is not one of predict, predict_proba"):
        SklearnBackend().load("iris", tmp_path, {"method": "transform"}, "cpu")


class _Broken(CustomModel):
    def load(self, path: Path) -> None:
        raise OSError(f"no weights under {path}")


def test_a_plugin_whose_load_raises_fails_the_load_with_its_message(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadFailed, match=r"_Broken failed to load .*: OSError: no weights under"):
        PluginBackend("broken", _Broken).load("m", tmp_path, {}, "cpu")


def test_no_runtime_serving_a_type_names_the_type_and_what_each_runtime_serves() -> None:
    view = ClusterView((InstanceView("rt-a", 100, 0, model_types=("onnx", "pytorch")),
                        InstanceView("rt-b", 100, 0, model_types=("sklearn",))), 0)
    model = rec.ModelRecord("m1", "LightGBM", "/p", "")
    with pytest.raises(FailedPrecondition) as err:
        no_type_error(model, view)
    assert "'LightGBM'" in err.value.message and "rt-a (onnx, pytorch); rt-b (sklearn)" in err.value.message
    no_type_error(rec.ModelRecord("m2", "SKLEARN", "/p", ""), view)  # served: no error


def test_a_schema_in_the_key_names_the_tensors_and_the_key_method_fills_its_output(tmp_path: Path) -> None:
    model = mt.write_sklearn_iris(tmp_path, file_name="model.skops", proba=True)
    schema = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
              "outputs": [{"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]}]}
    loaded = SklearnBackend().load("iris", tmp_path, {"schema": schema, "method": "predict_proba"}, "cpu")
    assert [t.name for t in loaded.signature.inputs] == ["features"] and loaded.signature.inputs[0].accepts == ("FP64",)
    out = loaded.infer({"features": model.x}, ())
    assert np.array_equal(out["probabilities"], model.expected["predict_proba"])


def test_string_class_labels_come_out_as_bytes(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from mesh.runtime.tensors import decode_outputs, encode_outputs

    x, y = mt.iris()
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    mt.save_sklearn(LogisticRegression(max_iter=1000).fit(x, names), tmp_path / "model.skops")
    loaded = SklearnBackend().load("iris-names", tmp_path, {}, "cpu")
    assert loaded.signature.outputs[0].datatype == "BYTES"
    resp = v2.ModelInferResponse()
    encode_outputs(resp, loaded.infer({"input-0": np.asarray(mt.IRIS_ROWS, np.float32)}, ()), loaded.signature)
    assert decode_outputs(resp)["predict"].tolist() == [b"versicolor", b"versicolor"]


def test_input_scikit_learn_rejects_is_invalid_argument(tmp_path: Path) -> None:
    mt.write_sklearn_iris(tmp_path, file_name="model.skops")
    loaded = SklearnBackend().load("iris", tmp_path, {}, "cpu")
    with pytest.raises(InvalidArgument, match="the model rejected the input: .*NaN"):
        loaded.infer({"input-0": np.full((1, 4), np.nan, np.float32)}, ())


def test_skops_types_the_operator_trusts_load(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x, y = mt.iris()
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y)
    mt.save_sklearn(forest, tmp_path / "model.skops")
    with pytest.raises(ModelLoadRefused, match="sklearn.tree._tree.Tree"):
        SklearnBackend().load("forest", tmp_path, {}, "cpu")
    loaded = SklearnBackend(skops_trusted_types=("sklearn.tree._tree.Tree",)).load("forest", tmp_path, {}, "cpu")
    rows = np.asarray(mt.IRIS_ROWS, np.float32)
    assert np.array_equal(loaded.infer({"input-0": rows}, ())["predict"], forest.predict(rows))
