"""``Scale``: ``y = x * factor``, the factor from ``scale.json`` in the model's folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mesh.runtime.backends.plugin import CustomModel

#: What size_bytes() claims, so a test can see the runtime charge it.
CLAIMED_BYTES = 3_000_000


class Scale(CustomModel):
    platform = "scale-plugin"

    def load(self, path: Path) -> None:
        file = path / "scale.json" if path.is_dir() else path
        self.factor = float(json.loads(file.read_text())["factor"])

    def signature(self) -> dict[str, list[dict[str, object]]]:
        return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}]}

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * np.float32(self.factor)}

    def size_bytes(self) -> int:
        return CLAIMED_BYTES
