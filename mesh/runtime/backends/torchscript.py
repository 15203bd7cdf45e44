"""TorchScript models through ``torch.jit.load`` (model type ``pytorch``).

A TorchScript archive does not say which V2 tensors it takes, so the signature
comes from, in order:

1. the model key JSON's ``schema``: ``{"schema": {"inputs": [{"name": "INPUT0",
   "datatype": "FP32", "shape": [-1, 16]}], "outputs": [...]}}``;
2. a ``meshserve_schema.json`` file inside the archive, in the same form
   (``torch.jit.save(m, path, _extra_files={"meshserve_schema.json": ...})``;
   ``mesh.modelgen`` writes its models that way, so they carry their signature).

``forward`` receives the inputs positionally in signature order; it may return a
tensor (one output), a tuple/list (outputs in order) or a dict keyed by output
name. ``allocated_bytes`` is the exact size of the parameters and buffers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mesh.errors import InvalidArgument, ModelLoadFailed
from mesh.runtime.backends.base import LoadedModel, Signature, find_model_file, signature_from_json

SCHEMA_FILE = "meshserve_schema.json"


class TorchScriptModel:
    platform = "pytorch_libtorch"

    def __init__(self, module: Any, signature: Signature, device: str, allocated_bytes: int) -> None:
        self._module: Any = module
        self.signature = signature
        self._device = device
        self.allocated_bytes = allocated_bytes

    def infer(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        import torch

        args = [_to_torch(inputs[t.name]).to(self._device) for t in self.signature.inputs]
        with torch.inference_mode():
            result = self._module(*args)
        names = [t.name for t in self.signature.outputs]
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, dict):
            produced = {str(k): v for k, v in result.items()}
        elif isinstance(result, (tuple, list)):
            if len(result) != len(names):
                raise InvalidArgument(
                    f"the model returned {len(result)} outputs but its signature names {len(names)}"
                )
            produced = dict(zip(names, result))
        else:
            raise InvalidArgument(f"the model returned {type(result).__name__}, not tensors")
        wanted = outputs or tuple(names)
        return {n: _to_numpy(produced[n]) for n in wanted}

    def unload(self) -> None:
        self._module = None
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _to_torch(arr: np.ndarray) -> Any:
    import torch

    if arr.dtype.name == "bfloat16":  # numpy has no bfloat16: reinterpret the bits
        return torch.from_numpy(arr.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True))  # frombuffer arrays are read-only


def _to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return np.asarray(t.numpy())


class TorchScriptBackend:
    model_type = "pytorch"

    def __init__(self, intra_op_threads: int = 1) -> None:
        self._threads = intra_op_threads

    def available(self) -> None:
        import torch  # noqa: F401

    def warm_up(self, device: str) -> None:
        """Imports torch (and creates the CUDA context) before the first real load,
        so those hundreds of MB are not charged to that model."""
        import torch

        import io

        torch.set_num_threads(self._threads)
        # A round trip through save/load: the first torch.jit.load grows RSS ~6 MB once.
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
        buf.seek(0)
        module = torch.jit.load(buf, map_location=device)
        module(torch.ones(1, 2, device=device)).sum().item()

    def load(self, model_id: str, path: Path, key: dict[str, Any], device: str) -> LoadedModel:
        import torch

        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        file = find_model_file(model_id, path, (".pt", ".pth", ".torchscript"), "model.pt")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadFailed(f"model {model_id!r}: device {device} but torch sees no CUDA device")
        extra = {SCHEMA_FILE: ""}
        try:
            module = torch.jit.load(str(file), map_location=device, _extra_files=extra)
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, ValueError, zip errors...
            raise ModelLoadFailed(f"model {model_id!r}: {file} is not a loadable TorchScript archive: {e}") from None
        module.eval()
        signature = self._signature(model_id, file, key, extra[SCHEMA_FILE])
        seen: set[int] = set()
        size = 0
        for t in list(module.parameters()) + list(module.buffers()):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                size += t.untyped_storage().nbytes()
        return TorchScriptModel(module, signature, device, size)

    @staticmethod
    def _signature(model_id: str, file: Path, key: dict[str, Any], embedded: str | bytes) -> Signature:
        if "schema" in key:
            return signature_from_json(model_id, key["schema"], "the model key's 'schema'")
        if embedded:
            try:
                data = json.loads(embedded)
            except ValueError as e:
                raise ModelLoadFailed(f"model {model_id!r}: {file} has an unreadable {SCHEMA_FILE}: {e}") from None
            return signature_from_json(model_id, data, f"{file.name}'s {SCHEMA_FILE}")
        raise ModelLoadFailed(
            f"model {model_id!r}: {file} does not say which tensors it takes: put "
            '{"schema": {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}} in the model key, '
            f"or save the model with a {SCHEMA_FILE} extra file"
        )
