"""Model backends by ModelMesh model type.

Backends import their framework (onnxruntime, torch) on first load, so a runtime
that serves only ONNX never pays for importing torch.
"""

from __future__ import annotations

from mesh.errors import InvalidArgument
from mesh.runtime.backends.base import Backend, LoadedModel, Signature, TensorSpec
from mesh.runtime.backends.onnx import OnnxBackend
from mesh.runtime.backends.torchscript import TorchScriptBackend

__all__ = ["Backend", "LoadedModel", "Signature", "TensorSpec", "BackendRegistry"]

#: Other spellings ModelMesh deployments use for the same formats.
ALIASES = {"onnxruntime": "onnx", "torchscript": "pytorch", "pytorch_libtorch": "pytorch", "onnxruntime_onnx": "onnx"}


class BackendRegistry:
    def __init__(self, backends: list[Backend]) -> None:
        self._by_type = {b.model_type: b for b in backends}

    @classmethod
    def default(cls, intra_op_threads: int = 1, model_types: tuple[str, ...] = ("onnx", "pytorch")) -> BackendRegistry:
        every: list[Backend] = [OnnxBackend(intra_op_threads), TorchScriptBackend(intra_op_threads)]
        return cls([b for b in every if b.model_type in model_types])

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self._by_type)

    def warm_up(self, device: str) -> None:
        """Runs each backend's ``warm_up(device)`` if it has one (blocking)."""
        for backend in self._by_type.values():
            fn = getattr(backend, "warm_up", None)
            if fn is not None:
                fn(device)

    def get(self, model_type: str) -> Backend:
        """The backend for ``model_type``; InvalidArgument for an unknown type."""
        name = model_type.strip().lower()
        if not name:
            raise InvalidArgument(f"model type is empty: this runtime loads {', '.join(self._by_type)}")
        backend = self._by_type.get(ALIASES.get(name, name))
        if backend is None:
            raise InvalidArgument(
                f"unknown model type {model_type!r}: this runtime loads {', '.join(self._by_type)}"
            )
        return backend
