"""scikit-learn estimators and pipelines (model type ``sklearn``).

Files: ``model.joblib``, ``model.pkl`` / ``model.pickle`` (joblib, i.e. pickle) and
``model.skops``. A folder is searched for those names first (KServe's layout: the
storage URI is a folder holding ``model.joblib``), else for the one file with one
of those suffixes.

**Pickle is code execution**: unpickling a file runs whatever code its author put
in it, with the runtime's rights (its storage credentials, every other model in
memory). So pickle-based files load only where the operator said they trust them
(``--allow-pickle`` / ``MESHSERVE_ALLOW_PICKLE=true``); otherwise the load fails with
FAILED_PRECONDITION naming the file and the setting. ``.skops`` files go through
skops' safe loader: only types skops trusts by default (scikit-learn's estimators,
numpy, scipy) plus those the operator lists in ``MESHSERVE_SKOPS_TRUSTED_TYPES``;
a file holding any other type is refused the same way, naming the types.

The model key's ``method`` picks what a request gets by default: ``predict``
(class labels: INT64 for integer classes, BYTES for string ones; values for regressors) or
``predict_proba`` (class probabilities); a classifier offers the other as a
second output (request it by name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mesh.errors import InvalidArgument, ModelLoadFailed, ModelLoadRefused
from mesh.runtime.backends.base import LoadedModel, Signature, TensorSpec, find_model_file
from mesh.runtime.backends.tabular import key_method, output_spec, probe, table_of, tabular_signature

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
SUFFIXES = (".joblib", ".skops", ".pkl", ".pickle")
PREFERRED = ("model.joblib", "model.skops", "model.pkl", "model.pickle")
METHODS = ("predict", "predict_proba")


class SklearnModel:
    platform = "sklearn"
    allocated_bytes = 0

    def __init__(self, estimator: Any, signature: Signature, method: str) -> None:
        self._estimator: Any = estimator
        self.signature = signature
        self._method = method

    def infer(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        x = table_of(inputs)
        wanted = outputs or (self.signature.outputs[0].name,)
        # An output named after a method runs it; a schema's other names run the key's method.
        try:
            return {name: np.asarray(getattr(self._estimator, name if name in METHODS else self._method)(x))
                    for name in wanted}
        except ValueError as e:  # scikit-learn's answer to input it cannot take (NaN, infinity...)
            raise InvalidArgument(f"the model rejected the input: {e}") from None

    def unload(self) -> None:
        self._estimator = None


class SklearnBackend:
    model_type = "sklearn"
    #: Fixed per-model cost in the size prediction (instead of MESHSERVE_SIZE_OVERHEAD's
    #: default, sized for ONNX Runtime sessions): 1,000 iris SVCs held ~25 KB each
    #: resident, 5.8 KB joblib files (BENCHMARKS.md, "Model formats").
    size_overhead = 24 * 2**10

    def __init__(self, *, allow_pickle: bool = False, skops_trusted_types: tuple[str, ...] = ()) -> None:
        self._allow_pickle = allow_pickle
        self._trusted = list(skops_trusted_types)

    def available(self) -> None:
        """Imports scikit-learn (ImportError if missing); skops is only looked for here."""
        import importlib.util

        import joblib  # noqa: F401
        import sklearn  # noqa: F401

        if importlib.util.find_spec("skops") is None:
            raise ImportError("No module named 'skops' (scikit-learn's safe loader)")

    def warm_up_later(self) -> None:
        """Imports skops after the runtime is ready: it lists every scikit-learn
        estimator when imported (~10 s and ~100-300 MB, torch's array-API shim
        included), which no first request should wait for or be charged."""
        import skops.io  # noqa: F401

    def warm_up(self, device: str) -> None:
        """Imports the estimator modules most models use, so the first model that
        needs one is not charged for it (tens of MB)."""
        import importlib

        for name in ("pipeline", "preprocessing", "linear_model", "svm", "tree", "ensemble", "neighbors"):
            importlib.import_module(f"sklearn.{name}")

    def load(self, model_id: str, path: Path, key: dict[str, Any], device: str) -> LoadedModel:
        file = find_model_file(model_id, path, SUFFIXES, PREFERRED)
        suffix = file.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            estimator = self._load_pickle(model_id, file)
        elif suffix == ".skops":
            estimator = self._load_skops(model_id, file)
        else:
            raise ModelLoadFailed(f"model {model_id!r}: {file.name} is not a scikit-learn model file: name it "
                                  "model.skops (skops.io.dump) or model.joblib (joblib.dump)")
        if not callable(getattr(estimator, "predict", None)):
            raise ModelLoadFailed(f"model {model_id!r}: {file.name} holds a {type(estimator).__name__}, "
                                  "not an estimator with predict()")
        method = key_method(model_id, key, METHODS)
        if method == "predict_proba" and not callable(getattr(estimator, "predict_proba", None)):
            raise ModelLoadFailed(f"model {model_id!r}: the model key asks for predict_proba but the "
                                  f"{type(estimator).__name__} in {file.name} has none")
        n_features = getattr(estimator, "n_features_in_", None)
        signature = tabular_signature(model_id, key, n_features,
                                      lambda n: _outputs(model_id, estimator, n, method, file.name))
        return SklearnModel(estimator, signature, method)

    def _load_pickle(self, model_id: str, file: Path) -> Any:
        if not self._allow_pickle:
            raise ModelLoadRefused(
                f"model {model_id!r}: {file.name} is a pickle, and loading a pickle runs any code its author put "
                "in it; this runtime refuses pickles. Save the model with skops instead "
                f"(skops.io.dump(model, 'model.skops')), or, if you trust every file this runtime may load, start "
                "it with --allow-pickle (MESHSERVE_ALLOW_PICKLE=true)"
            )
        import joblib

        try:
            return joblib.load(file)
        except Exception as e:  # noqa: BLE001 - unpickling raises anything the file's classes raise
            raise ModelLoadFailed(f"model {model_id!r}: {file} is not a loadable joblib/pickle file: "
                                  f"{type(e).__name__}: {e}") from None

    def _load_skops(self, model_id: str, file: Path) -> Any:
        import skops.io as sio
        from skops.io.exceptions import UntrustedTypesFoundException

        try:
            return sio.load(file, trusted=self._trusted or None)
        except UntrustedTypesFoundException:
            untrusted = [t for t in sio.get_untrusted_types(file=file) if t not in self._trusted]
            raise ModelLoadRefused(
                f"model {model_id!r}: {file.name} holds types skops does not trust by default: "
                f"{', '.join(untrusted)}. If you trust them, list them in this runtime's "
                "MESHSERVE_SKOPS_TRUSTED_TYPES (comma-separated)"
            ) from None
        except Exception as e:  # noqa: BLE001 - zip, JSON and construction errors
            raise ModelLoadFailed(f"model {model_id!r}: {file} is not a loadable skops file: "
                                  f"{type(e).__name__}: {e}") from None


def _outputs(model_id: str, estimator: Any, n_features: int, method: str, file_name: str) -> list[TensorSpec]:
    """The outputs in the estimator's own dtypes, the key's method first."""
    specs: dict[str, TensorSpec] = {}
    for name in METHODS:
        if callable(getattr(estimator, name, None)):
            spec = output_spec(name, probe(model_id, getattr(estimator, name), n_features, f"{file_name}'s {name}"))
            if spec is not None:
                specs[name] = spec
    if method not in specs:
        raise ModelLoadFailed(
            f"model {model_id!r}: {file_name}'s {method} returns values no V2 datatype carries: put a 'schema' "
            'in the model key, or ask for {"method": "predict_proba"}'
        )
    return [specs[method]] + [s for n, s in specs.items() if n != method]
