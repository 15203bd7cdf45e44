"""Real test models, deterministic from a seed: for tests, the demo and load tests.

An MLP ``INPUT0`` FP32 [-1, in_dim] -> Gemm -> Relu -> Gemm -> Relu -> Gemm ->
``OUTPUT0`` FP32 [-1, out_dim], written as ONNX (``write_onnx_mlp``) or TorchScript
(``write_torchscript_mlp``), and :func:`reference_output` computing the same in
numpy. :func:`spec_for_bytes` picks the hidden width for a target file size
(hidden=124 is ~70 KB, 1000 ~4 MB, 3530 ~50 MB). ``write_onnx_identity`` writes a
model passing one input of each V2 datatype through, for codec round trips.
onnx and torch are imported on use: the runtime itself never needs this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Datatypes the identity model passes through, with their numpy types.
IDENTITY_DTYPES = ("FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64",
                   "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")

#: The name of the signature file embedded in TorchScript archives (see
#: mesh/runtime/backends/torchscript.py for how it is read).
TORCHSCRIPT_SCHEMA_FILE = "meshserve_schema.json"


@dataclass(frozen=True, slots=True)
class MlpSpec:
    in_dim: int = 16
    hidden: int = 124
    out_dim: int = 4
    seed: int = 0

    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W, b) per layer, W of shape [fan_in, fan_out], float32."""
        rng = np.random.default_rng(self.seed)
        dims = [self.in_dim, self.hidden, self.hidden, self.out_dim]
        out = []
        for fan_in, fan_out in zip(dims, dims[1:]):
            w = (rng.standard_normal((fan_in, fan_out)) / math.sqrt(fan_in)).astype(np.float32)
            b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
            out.append((w, b))
        return out

    @property
    def param_bytes(self) -> int:
        return sum(w.nbytes + b.nbytes for w, b in self.weights())


def spec_for_bytes(target_bytes: int, *, in_dim: int = 16, out_dim: int = 4, seed: int = 0) -> MlpSpec:
    """The spec whose weights take about ``target_bytes`` (float32)."""
    # params = in*h + h*h + h*out + 2h + out  ->  solve h^2 + (in+out+2)h - n = 0
    n = target_bytes / 4
    b = in_dim + out_dim + 2
    hidden = max(1, int((-b + math.sqrt(b * b + 4 * n)) / 2))
    return MlpSpec(in_dim, hidden, out_dim, seed)


def reference_output(spec: MlpSpec, x: np.ndarray) -> np.ndarray:
    """What the generated models compute, in numpy (float64 accumulation)."""
    h = x.astype(np.float64)
    layers = spec.weights()
    for i, (w, b) in enumerate(layers):
        h = h @ w.astype(np.float64) + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h.astype(np.float32)


def sample_input(spec: MlpSpec, batch: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, spec.in_dim)).astype(np.float32)


def write_onnx_mlp(spec: MlpSpec, path: str | Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    nodes, inits = [], []
    current = "INPUT0"
    layers = spec.weights()
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(layers) - 1
        out = "OUTPUT0" if last else f"G{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"R{i}"]))
            current = f"R{i}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", spec.in_dim])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", spec.out_dim])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="meshserve.modelgen")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_onnx_identity(path: str | Path, dtypes: tuple[str, ...] = IDENTITY_DTYPES) -> Path:
    """``IN_<DT>`` [-1, 4] -> ``OUT_<DT>`` for each datatype (Identity nodes)."""
    import onnx
    from onnx import TensorProto, helper

    elem = {"FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE, "FP16": TensorProto.FLOAT16,
            "INT8": TensorProto.INT8, "INT16": TensorProto.INT16, "INT32": TensorProto.INT32,
            "INT64": TensorProto.INT64, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
            "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "BOOL": TensorProto.BOOL}
    path = Path(path)
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"IN_{d}"], [f"OUT_{d}"]) for d in dtypes], "identity",
        [helper.make_tensor_value_info(f"IN_{d}", elem[d], ["batch", 4]) for d in dtypes],
        [helper.make_tensor_value_info(f"OUT_{d}", elem[d], ["batch", 4]) for d in dtypes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="meshserve.modelgen")
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mlp_schema(spec: MlpSpec) -> dict[str, list[dict[str, object]]]:
    """The V2 signature of the MLP, in the form the TorchScript backend reads."""
    return {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, spec.in_dim]}],
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, spec.out_dim]}],
    }


def write_torchscript_mlp(spec: MlpSpec, path: str | Path, *, embed_schema: bool = True) -> Path:
    """A scripted MLP; its signature travels inside the archive (``embed_schema``)."""
    import torch

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList()
            for w, b in spec.weights():
                lin = torch.nn.Linear(w.shape[0], w.shape[1])
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(w.T.copy()))
                    lin.bias.copy_(torch.from_numpy(b))
                self.layers.append(lin)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = len(self.layers)
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < n - 1:
                    x = torch.relu(x)
            return x

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(Mlp().eval())
    extra = {TORCHSCRIPT_SCHEMA_FILE: json.dumps(mlp_schema(spec))} if embed_schema else {}
    torch.jit.save(scripted, str(path), _extra_files=extra)
    return path
