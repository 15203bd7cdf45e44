"""What the scikit-learn, XGBoost and LightGBM backends share: their V2 signature.

These models take one 2-D table of features. The signature comes from the model
(its feature count: ``n_features_in_``, ``num_feature()``), else from the model
key's ``schema`` (as for TorchScript, mesh/runtime/backends/torchscript.py). The
input is ``input-0`` FP32 ``[-1, n_features]``; FP64 is taken as it is, and a
request may call the one input anything (MLServer's clients say ``predict``,
KServe's ``input-0``). Outputs are named after the method that computes them
(``predict``, ``predict_proba``, as MLServer names them) in the model's own dtype,
found by running the model once on a row of zeros; with no outputs requested a
request gets the first one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mesh.errors import ModelLoadFailed
from mesh.runtime.backends.base import LoadedModel, Signature, TensorSpec, find_model_file, signature_from_json

INPUT_NAME = "input-0"


def key_method(model_id: str, key: dict[str, Any], allowed: tuple[str, ...]) -> str:
    """The model key's ``method`` (default: the first allowed)."""
    method = key.get("method", allowed[0])
    if method not in allowed:
        raise ModelLoadFailed(
            f"model {model_id!r}: the model key's method {method!r} is not one of {', '.join(allowed)}"
        )
    return str(method)


def probe(model_id: str, fn: Callable[[np.ndarray], Any], n_features: int, what: str) -> np.ndarray:
    """Runs ``fn`` on one row of zeros: the output's dtype and trailing shape."""
    try:
        return np.asarray(fn(np.zeros((1, n_features), np.float32)))
    except Exception as e:  # noqa: BLE001 - any library error means the model does not run
        raise ModelLoadFailed(f"model {model_id!r}: {what} does not run on {n_features} features: "
                              f"{type(e).__name__}: {e}") from None


def output_spec(name: str, sample: np.ndarray) -> TensorSpec | None:
    """The spec of an output like ``sample`` (batch first; strings are BYTES); None
    for a dtype V2 cannot carry."""
    from mesh.runtime.tensors import datatype_of

    try:
        datatype = datatype_of(sample.dtype)
    except Exception:  # noqa: BLE001 - datetimes, complex numbers...
        return None
    return TensorSpec(name, datatype, (-1, *sample.shape[1:]))


def tabular_signature(model_id: str, key: dict[str, Any], n_features: int | None,
                      outputs: Callable[[int], list[TensorSpec]]) -> Signature:
    """The key's ``schema`` if given, else one FP32 table of ``n_features`` columns
    and ``outputs(n_features)``."""
    if "schema" in key:
        sig = signature_from_json(model_id, key["schema"], "the model key's 'schema'")
        if len(sig.inputs) != 1:
            raise ModelLoadFailed(f"model {model_id!r}: the model key's 'schema' names {len(sig.inputs)} inputs; "
                                  "this model takes one table of features")
        inputs = tuple(TensorSpec(t.name, t.datatype, t.shape, ("FP64",) if t.datatype == "FP32" else ())
                       for t in sig.inputs)
        return Signature(inputs, sig.outputs, any_input_name=len(inputs) == 1)
    if not n_features:
        raise ModelLoadFailed(
            f"model {model_id!r} does not say how many features it takes: put "
            '{"schema": {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}} in the model key'
        )
    table = TensorSpec(INPUT_NAME, "FP32", (-1, n_features), ("FP64",))
    return Signature((table,), tuple(outputs(n_features)), any_input_name=True)


def table_of(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The one input (decode_inputs has checked it against the signature)."""
    return next(iter(inputs.values()))


class BoosterModel:
    """A gradient-boosted model with one output, ``predict`` (XGBoost, LightGBM)."""

    platform = ""
    allocated_bytes = 0

    def __init__(self, booster: Any, threads: int) -> None:
        self._booster: Any = booster
        self._threads = threads
        self.signature = Signature((), ())

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        result = self.predict(table_of(inputs))
        return {name: result for name in outputs or (self.signature.outputs[0].name,)}

    def unload(self) -> None:
        self._booster = None

    def sign(self, model_id: str, key: dict[str, Any], n_features: int, file_name: str) -> BoosterModel:
        """Sets the signature (the key's schema, else probed) and returns the model."""

        def outputs(n: int) -> list[TensorSpec]:
            spec = output_spec("predict", probe(model_id, self.predict, n, f"{file_name}'s predict"))
            assert spec is not None  # boosters predict floats
            return [spec]

        self.signature = tabular_signature(model_id, key, n_features, outputs)
        return self


class BoosterBackend:
    """Loads a booster file: subclasses name the library and files, and ``open`` one."""

    model_type = ""
    library = ""
    suffixes: tuple[str, ...] = ()
    preferred: tuple[str, ...] = ()

    def __init__(self, intra_op_threads: int = 1) -> None:
        self._threads = intra_op_threads

    def available(self) -> None:
        importlib.import_module(self.library)

    def open(self, model_id: str, file: Path) -> tuple[BoosterModel, int]:
        """The model in ``file`` and its feature count; ModelLoadFailed with the library's reason."""
        raise NotImplementedError

    def load(self, model_id: str, path: Path, key: dict[str, Any], device: str) -> LoadedModel:
        file = find_model_file(model_id, path, self.suffixes, self.preferred)
        key_method(model_id, key, ("predict",))
        model, n_features = self.open(model_id, file)
        return model.sign(model_id, key, n_features, file.name)
