"""A string-in/string-out ONNX model for BYTES tensors, with its NumPy reference.

``TEXT`` BYTES [-1] -> StringConcat(TEXT, SUFFIX) -> ``TAGGED`` BYTES [-1], with
``SUFFIX`` a constant (" ✓" by default), so non-ASCII text round-trips too.
ONNX Runtime serves ``tensor(string)`` natively, so this is a real text model
in miniature (tokeniser front ends look the same at the boundary).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


SUFFIX = " \u2713"


def write_onnx_tagger(path: str | Path, suffix: str = SUFFIX) -> Path:
    import onnx
    from onnx import TensorProto, helper

    path = Path(path)
    const = helper.make_tensor("SUFFIX", TensorProto.STRING, [1], [suffix.encode()])  # type: ignore[list-item]
    node = helper.make_node("StringConcat", ["TEXT", "SUFFIX"], ["TAGGED"])
    graph = helper.make_graph(
        [node], "tagger",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("TAGGED", TensorProto.STRING, ["n"])],
        initializer=[const],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], producer_name="meshserve.modelgen")
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tagger_reference(texts: list[str], suffix: str = SUFFIX) -> np.ndarray:
    """What the model returns, as UTF-8 bytes (how BYTES tensors decode)."""
    return np.array([(t + suffix).encode() for t in texts], dtype=object)
