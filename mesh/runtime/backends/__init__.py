"""Model backends by model type.

Backends import their framework lazily: a runtime builds every backend it is asked
for, then :meth:`BackendRegistry.prepare` (at start, in a worker thread) imports
each one's library and drops those that do not import, so a runtime image without
XGBoost still starts and simply does not advertise ``xgboost``. Types are matched
case-insensitively under their KServe / ModelMesh names (mesh/model_types.py).
"""

from __future__ import annotations

import logging

from mesh.errors import InvalidArgument
from mesh.model_types import BUILTIN_TYPES, EXTRA_FOR, canonical_model_type
from mesh.runtime.backends.base import Backend, LoadedModel, Signature, TensorSpec
from mesh.runtime.backends.lightgbm import LightGBMBackend
from mesh.runtime.backends.onnx import OnnxBackend
from mesh.runtime.backends.plugin import PluginBackend, import_class, installed_plugins
from mesh.runtime.backends.sklearn import SklearnBackend
from mesh.runtime.backends.torchscript import TorchScriptBackend
from mesh.runtime.backends.xgboost import XGBoostBackend

__all__ = ["Backend", "LoadedModel", "Signature", "TensorSpec", "BackendRegistry"]

log = logging.getLogger(__name__)


class BackendRegistry:
    def __init__(self, backends: list[Backend]) -> None:
        self._by_type = {b.model_type: b for b in backends}

    @classmethod
    def default(cls, intra_op_threads: int = 1, model_types: tuple[str, ...] = ("onnx", "pytorch"), *,
                allow_pickle: bool = False, skops_trusted_types: tuple[str, ...] = (),
                custom_model_types: tuple[str, ...] = (),
                onnx_full_optimization_min_bytes: int = 0) -> BackendRegistry:
        """The backends of ``model_types`` (empty: every built-in type and installed
        plugin) plus the ``module:Class`` types allowed by ``custom_model_types``
        (ValueError if one does not import: the operator asked for it)."""
        every: list[Backend] = [
            OnnxBackend(intra_op_threads, full_optimization_min_bytes=onnx_full_optimization_min_bytes),
            TorchScriptBackend(intra_op_threads),
            SklearnBackend(allow_pickle=allow_pickle, skops_trusted_types=skops_trusted_types),
            XGBoostBackend(intra_op_threads), LightGBMBackend(intra_op_threads),
        ]
        wanted = {canonical_model_type(t) for t in model_types}
        chosen = [b for b in every if not wanted or b.model_type in wanted]
        for name, load in installed_plugins().items():
            if name in BUILTIN_TYPES or (wanted and name not in wanted):
                continue
            try:
                chosen.append(PluginBackend(name, load()))
            except ValueError as e:  # an installed plugin that is broken: serve the rest
                log.warning("plugin model type %r (entry point group meshserve.backends) not served: %s", name, e)
        chosen += [PluginBackend(t, import_class(t)) for t in custom_model_types]
        return cls(chosen)

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self._by_type)

    def prepare(self) -> None:
        """Imports each backend's library (blocking); a backend whose library does not
        import is dropped with a warning, so the runtime does not advertise its type."""
        for name, backend in list(self._by_type.items()):
            check = getattr(backend, "available", None)
            if check is None:
                continue
            try:
                check()
            except Exception as e:  # noqa: BLE001 - ImportError, or a broken native library
                del self._by_type[name]
                log.warning("model type %s not served: its library does not import (%s: %s); "
                            "pip install 'meshserve[%s]'", name, type(e).__name__, e, EXTRA_FOR.get(name, name))

    def warm_up(self, device: str) -> None:
        """Runs each backend's ``warm_up(device)`` if it has one (blocking)."""
        for backend in self._by_type.values():
            fn = getattr(backend, "warm_up", None)
            if fn is not None:
                fn(device)

    def warm_up_later(self) -> None:
        """Runs each backend's ``warm_up_later()`` (blocking; after the runtime is ready)."""
        for backend in self._by_type.values():
            fn = getattr(backend, "warm_up_later", None)
            if fn is not None:
                fn()

    def get(self, model_type: str) -> Backend:
        """The backend for ``model_type``; InvalidArgument for an unknown type."""
        name = canonical_model_type(model_type)
        if not name:
            raise InvalidArgument(f"model type is empty: this runtime loads {', '.join(self._by_type)}")
        backend = self._by_type.get(name)
        if backend is None:
            raise InvalidArgument(
                f"unknown model type {model_type!r}: this runtime loads {', '.join(self._by_type)}"
            )
        return backend
