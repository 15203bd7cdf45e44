"""XGBoost Boosters (model type ``xgboost``).

Files: ``.json``, ``.ubj`` (UBJSON) and ``.bst`` / ``.model`` (what
``Booster.save_model`` writes for those names); a folder is searched for
``model.bst``, ``model.json``, ``model.ubj``, ``model.model`` (KServe's
xgbserver names), else the one file with such a suffix. The output ``predict`` is
``Booster.predict`` on a DMatrix of the rows, as KServe's xgbserver returns it:
class probabilities ``[n, classes]`` for ``multi:softprob``, one probability for
``binary:logistic``, values for regressors (FP32, XGBoost's own dtype). Prediction
runs on the CPU with ``MESHSERVE_INTRA_OP_THREADS`` threads per model, whatever
the runtime's device. No pickle is involved: these files are data.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mesh.errors import ModelLoadFailed
from mesh.runtime.backends.tabular import BoosterBackend, BoosterModel

_PREFIX = re.compile(r"^\[[\d:]+\] \S+: ")


def library_reason(message: str) -> str:
    """XGBoost's error without its C++ stack trace and source location."""
    return _PREFIX.sub("", message.split("Stack trace:")[0].strip()).strip()


class XGBoostModel(BoosterModel):
    platform = "xgboost"

    def predict(self, x: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        return np.asarray(self._booster.predict(xgb.DMatrix(x, nthread=self._threads)))


class XGBoostBackend(BoosterBackend):
    model_type = "xgboost"
    library = "xgboost"
    suffixes = (".json", ".ubj", ".bst", ".model")
    preferred = ("model.bst", "model.json", "model.ubj", "model.model")

    def open(self, model_id: str, file: Path) -> tuple[BoosterModel, int]:
        import xgboost as xgb

        try:
            booster = xgb.Booster(params={"nthread": self._threads}, model_file=str(file))
        except xgb.core.XGBoostError as e:
            raise ModelLoadFailed(f"model {model_id!r}: {file} is not a loadable XGBoost model: "
                                  f"{library_reason(str(e))}") from None
        count = getattr(booster, "num_features", None) or getattr(booster, "num_feature")
        return XGBoostModel(booster, self._threads), int(count())
