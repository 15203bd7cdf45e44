"""The small interface every model backend implements.

A backend turns local model files into a :class:`LoadedModel`. All methods are
blocking and called from executor threads (never on the event loop). The
runtime does the size measurement around ``load`` (see mesh/runtime/sizing.py);
a backend adds what it knows exactly (``allocated_bytes``: weights it holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mesh.errors import ModelLoadFailed


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    #: KServe V2 datatype: FP32, INT64, BOOL...
    datatype: str
    #: -1 for a dynamic dimension.
    shape: tuple[int, ...]
    #: Other datatypes an input takes as they are (the tabular backends take FP64 beside FP32).
    accepts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: A model with one input takes it under any name (MLServer and KServe clients
    #: call a scikit-learn model's input "predict", "input-0"...).
    any_input_name: bool = False

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


class LoadedModel(Protocol):
    signature: Signature
    #: V2 ``platform`` reported by ModelMetadata (e.g. ``onnxruntime_onnx``).
    platform: str
    #: Bytes the backend knows it holds (weights on the device); 0 if it cannot tell.
    allocated_bytes: int

    def infer(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Runs the model; ``outputs`` names the outputs wanted (all if empty)."""
        ...

    def unload(self) -> None:
        """Drops every reference the model holds (device memory included)."""
        ...


class Backend(Protocol):
    #: The ModelMesh model type this backend loads (``onnx``, ``pytorch``).
    model_type: str

    def load(self, model_id: str, path: Path, key: dict[str, Any], device: str) -> LoadedModel:
        """Loads ``path`` (a file, or a folder holding one model file).

        Raises :class:`~mesh.errors.ModelLoadFailed` naming the file and the
        parser's error when the files are not a loadable model.
        """
        ...


def find_model_file(model_id: str, path: Path, suffixes: tuple[str, ...], preferred: str | tuple[str, ...]) -> Path:
    """The model file itself: ``path``, or inside a folder ``preferred`` (the first
    of several that exists), else the one file with a known suffix (Triton's
    ``<name>/1/model.onnx`` and KServe's ``model/model.joblib`` layouts work)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelLoadFailed(f"model {model_id!r}: {path} is neither a file nor a folder")
    names = (preferred,) if isinstance(preferred, str) else preferred
    for name in names:
        if (path / name).is_file():
            return path / name
    preferred = names[0]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelLoadFailed(f"model {model_id!r}: no {'/'.join(suffixes)} file under {path}")
    shown = ", ".join(str(p.relative_to(path)) for p in found[:5])
    raise ModelLoadFailed(
        f"model {model_id!r}: {len(found)} model files under {path} ({shown}); name one, or call it {preferred}"
    )


def signature_from_json(model_id: str, data: Any, where: str) -> Signature:
    """Parses ``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}``."""
    from mesh.runtime.tensors import V2_DATATYPES

    def specs(kind: str) -> tuple[TensorSpec, ...]:
        items = data.get(kind) if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise ModelLoadFailed(f"model {model_id!r}: {where} has no '{kind}' list")
        out = []
        for i, item in enumerate(items):
            try:
                name, dt, shape = str(item["name"]), str(item["datatype"]).upper(), tuple(int(d) for d in item["shape"])
            except (KeyError, TypeError, ValueError):
                raise ModelLoadFailed(
                    f"model {model_id!r}: {where} {kind}[{i}] needs name, datatype and shape (a list of ints, -1 dynamic)"
                ) from None
            if dt not in V2_DATATYPES:
                raise ModelLoadFailed(f"model {model_id!r}: {where} {kind}[{i}] has unsupported datatype {dt!r}")
            out.append(TensorSpec(name, dt, shape))
        return tuple(out)

    return Signature(specs("inputs"), specs("outputs"))
