"""LightGBM Boosters (model type ``lightgbm``).

Files: what ``Booster.save_model`` writes (text), named ``.txt``, ``.lgb``,
``.model`` or ``.bst`` (KServe's lgbserver and MLServer look for ``model.bst``); a
folder is searched for ``model.bst``, ``model.txt``, ``model.lgb``, ``model.model``,
else the one file with such a suffix. The output ``predict`` is
``Booster.predict`` of the rows, as KServe's lgbserver returns it: class
probabilities ``[n, classes]`` for ``multiclass``, one probability for ``binary``,
values for regressors (FP64, LightGBM's dtype), with ``MESHSERVE_INTRA_OP_THREADS``
threads per model. No pickle is involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mesh.errors import ModelLoadFailed
from mesh.runtime.backends.tabular import BoosterBackend, BoosterModel


class LightGBMModel(BoosterModel):
    platform = "lightgbm"

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._booster.predict(x, num_threads=self._threads))


class LightGBMBackend(BoosterBackend):
    model_type = "lightgbm"
    library = "lightgbm"
    suffixes = (".txt", ".lgb", ".model", ".bst")
    preferred = ("model.bst", "model.txt", "model.lgb", "model.model")

    def open(self, model_id: str, file: Path) -> tuple[BoosterModel, int]:
        import lightgbm as lgb

        try:
            booster = lgb.Booster(model_file=str(file))
        except (lgb.basic.LightGBMError, ValueError, UnicodeDecodeError) as e:
            raise ModelLoadFailed(f"model {model_id!r}: {file} is not a loadable LightGBM model: {e}") from None
        return LightGBMModel(booster, self._threads), int(booster.num_feature())
