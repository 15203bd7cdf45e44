"""Custom model types: a user's class, served like a built-in format.

Subclass :class:`CustomModel` (README "Custom models" has an example)::

    class Echo(CustomModel):
        def load(self, path):            # the model's local file or folder
            self.scale = float((path / "scale.txt").read_text())
        def signature(self):             # or put a "schema" in the model key
            return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}
        def infer(self, inputs):         # numpy in, numpy out, by tensor name
            return {"y": inputs["x"] * self.scale}

and make it a model type in one of two ways:

- a ``meshserve.backends`` entry point in the plugin's package metadata
  (``[project.entry-points."meshserve.backends"] echo = "my_pkg.models:Echo"``):
  every runtime where the package is installed serves type ``echo``;
- the type ``my_pkg.models:Echo`` itself, served only by runtimes that list it in
  ``MESHSERVE_CUSTOM_MODEL_TYPES`` / ``--custom-model-types`` (importing a class
  runs its module's code, so the operator names what may run).

One instance per loaded model; every method is called from a worker thread
(never the event loop), ``infer`` possibly from several at once.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from mesh.errors import InvalidArgument, MeshError, ModelLoadFailed
from mesh.runtime.backends.base import LoadedModel, Signature, signature_from_json

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "meshserve.backends"


class CustomModel:
    """The base class of a custom model. Override ``load`` and ``infer``; the rest is optional."""

    #: V2 ``platform`` reported by ModelMetadata.
    platform = "custom"

    def __init__(self, model_id: str, key: dict[str, Any], device: str) -> None:
        self.model_id = model_id
        #: The model key (JSON object) it was registered with.
        self.key = key
        #: The runtime's device: ``cpu``, ``cuda:N``.
        self.device = device

    def load(self, path: Path) -> None:
        """Loads the model from ``path`` (its local file, or folder of files). Raise
        any exception to fail the load; its message reaches the user."""
        raise NotImplementedError

    def signature(self) -> Signature | dict[str, Any]:
        """The V2 inputs and outputs: a :class:`Signature`, or
        ``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}``. Default:
        the model key's ``schema``."""
        if "schema" not in self.key:
            raise ModelLoadFailed(f"model {self.model_id!r}: {type(self).__name__} has no signature(); "
                                  "put a 'schema' in the model key")
        schema: dict[str, Any] = self.key["schema"]
        return schema

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request: arrays by input name in, arrays by output name out."""
        raise NotImplementedError

    def size_bytes(self) -> int:
        """Bytes the model holds, if it knows (the runtime charges the larger of this
        and the memory growth it measured across ``load``); 0: it does not know."""
        return 0

    def unload(self) -> None:
        """Drops what the model holds (the object is discarded afterwards)."""


class PluginModel:
    """A :class:`CustomModel` behind the runtime's LoadedModel interface."""

    def __init__(self, model: CustomModel, signature: Signature) -> None:
        self._model: CustomModel | None = model
        self.signature = signature
        self.platform = str(model.platform)
        self.allocated_bytes = max(0, int(model.size_bytes() or 0))

    def infer(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        assert self._model is not None
        result = self._model.infer(inputs)
        if not isinstance(result, dict):
            raise InvalidArgument(f"custom model returned {type(result).__name__}, not a dict of arrays by output name")
        wanted = outputs or tuple(t.name for t in self.signature.outputs)
        missing = [n for n in wanted if n not in result]
        if missing:
            raise InvalidArgument(f"custom model returned no output {', '.join(map(repr, missing))}")
        return {n: np.asarray(result[n]) for n in wanted}

    def unload(self) -> None:
        model, self._model = self._model, None
        if model is not None:
            model.unload()


class PluginBackend:
    """Loads one custom model type with its class."""

    def __init__(self, model_type: str, cls: type[CustomModel]) -> None:
        self.model_type = model_type
        self._cls = cls

    def load(self, model_id: str, path: Path, key: dict[str, Any], device: str) -> LoadedModel:
        name = f"{self._cls.__module__}.{self._cls.__qualname__}"
        try:
            model = self._cls(model_id, key, device)
            model.load(path)
            declared = model.signature()
        except MeshError:
            raise
        except Exception as e:  # noqa: BLE001 - the plugin's own errors, reported as its load failing
            raise ModelLoadFailed(f"model {model_id!r}: {name} failed to load {path}: {type(e).__name__}: {e}") from None
        signature = declared if isinstance(declared, Signature) else \
            signature_from_json(model_id, declared, f"{name}.signature()")
        return PluginModel(model, signature)


def import_class(spec: str) -> type[CustomModel]:
    """``package.module:Class`` -> the class; ValueError naming what is wrong."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"custom model type {spec!r}: write it package.module:Class")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # noqa: BLE001 - import errors of any kind
        raise ValueError(f"custom model type {spec!r} does not import: {type(e).__name__}: {e}") from None
    if not (isinstance(obj, type) and issubclass(obj, CustomModel)):
        raise ValueError(f"custom model type {spec!r} is not a subclass of mesh.runtime.backends.plugin.CustomModel")
    return obj


def installed_plugins() -> dict[str, Callable[[], type[CustomModel]]]:
    """Entry points of the ``meshserve.backends`` group: type name -> a loader of its class."""
    return {ep.name.strip().lower(): functools.partial(import_class, ep.value)
            for ep in entry_points(group=ENTRY_POINT_GROUP)}
