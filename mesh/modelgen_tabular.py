"""Real scikit-learn, XGBoost and LightGBM test models with their reference outputs.

The sibling of mesh/modelgen.py for the tabular formats. Data comes with
scikit-learn (the iris set, ``make_classification`` / ``make_regression``): no
download. Each writer returns a :class:`TabularModel`: what to register (path,
type, key), sample rows, and what the library itself predicts for them, computed
from the file as written (reloaded), so a served model can be compared exactly.

``write_sklearn_iris(folder)`` writes KServe's first example the way KServe stores it
(``folder/model.joblib``, an SVC on iris): it predicts ``[1, 1]`` for
:data:`IRIS_ROWS`. Libraries are imported on use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The two rows of KServe's sklearn-iris example request (``{"instances": ...}``).
IRIS_ROWS = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]


@dataclass(frozen=True)
class TabularModel:
    #: What to register as the model's path: a file, or a KServe-style folder.
    path: Path
    model_type: str
    #: Sample rows (FP32) and the library's own outputs for them, by output name.
    x: np.ndarray
    expected: dict[str, np.ndarray]
    #: A model key that fits (e.g. ``{"method": "predict_proba"}``); {} for none.
    key: dict[str, Any] = field(default_factory=dict)


def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


def _table(task: str, rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification, make_regression

    if task == "classifier":
        x, y = make_classification(rows, features, n_informative=min(features, 6), n_classes=3, random_state=seed)
    elif task == "regressor":
        x, y = make_regression(rows, features, noise=0.1, random_state=seed)
    else:
        raise ValueError(f"task is classifier or regressor, not {task!r}")
    return x.astype(np.float32), y


def _sample(x: np.ndarray, n: int = 5) -> np.ndarray:
    return np.ascontiguousarray(x[:: max(1, len(x) // n)][:n], dtype=np.float32)


def sklearn_outputs(estimator: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    out = {"predict": np.asarray(estimator.predict(x))}
    if callable(getattr(estimator, "predict_proba", None)):
        out["predict_proba"] = np.asarray(estimator.predict_proba(x))
    return out


def save_sklearn(estimator: Any, path: str | Path) -> Path:
    """joblib for ``.joblib`` / ``.pkl`` / ``.pickle``, skops for ``.skops``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".skops":
        import skops.io as sio

        sio.dump(estimator, path)
    else:
        import joblib

        joblib.dump(estimator, path)
    return path


def load_sklearn(path: Path, trusted: list[str] | None = None) -> Any:
    if path.suffix == ".skops":
        import skops.io as sio

        return sio.load(path, trusted=trusted)
    import joblib

    return joblib.load(path)


def write_sklearn_iris(folder: str | Path, *, file_name: str = "model.joblib", proba: bool = False,
                       key: dict[str, Any] | None = None) -> TabularModel:
    """An SVC on iris as ``folder/<file_name>`` (KServe's sklearn-iris); rows:
    :data:`IRIS_ROWS`. ``proba``: a logistic regression instead, which has predict_proba."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    x, y = iris()
    model = (LogisticRegression(max_iter=1000) if proba else SVC()).fit(x, y)
    file = save_sklearn(model, Path(folder) / file_name)
    rows = np.asarray(IRIS_ROWS, np.float32)
    return TabularModel(Path(folder), "sklearn", rows, sklearn_outputs(load_sklearn(file), rows), key or {})


def write_sklearn(path: str | Path, *, task: str = "classifier", size: str = "small", seed: int = 0) -> TabularModel:
    """``small``: a logistic / linear model on iris-sized data; ``large``: a random
    forest (200 trees) on 20,000 rows. Saved as the suffix of ``path`` says."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    path = Path(path)
    large = size == "large"
    x, y = _table(task, 20_000 if large else 300, 20 if large else 8, seed)
    if large:
        est = (RandomForestClassifier if task == "classifier" else RandomForestRegressor)(
            n_estimators=200, max_depth=12, random_state=seed, n_jobs=1)
    else:
        est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000) if task == "classifier"
                            else LinearRegression())
    est.fit(x, y)
    save_sklearn(est, path)
    trusted = ["sklearn.tree._tree.Tree"] if large else None
    rows = _sample(x)
    return TabularModel(path, "sklearn", rows, sklearn_outputs(load_sklearn(path, trusted), rows))


def write_xgboost(path: str | Path, *, task: str = "classifier", trees: int = 20, depth: int = 4,
                  rows: int = 500, features: int = 8, seed: int = 0) -> TabularModel:
    """A Booster (``multi:softprob`` over 3 classes, or ``reg:squarederror``) saved
    as the suffix of ``path`` says (.json, .ubj, .bst...)."""
    import xgboost as xgb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y = _table(task, rows, features, seed)
    params: dict[str, Any] = {"max_depth": depth, "seed": seed, "nthread": 1}
    params.update({"objective": "multi:softprob", "num_class": 3} if task == "classifier"
                  else {"objective": "reg:squarederror"})
    xgb.train(params, xgb.DMatrix(x, label=y), trees).save_model(str(path))
    sample = _sample(x)
    booster = xgb.Booster(model_file=str(path))
    return TabularModel(path, "xgboost", sample, {"predict": np.asarray(booster.predict(xgb.DMatrix(sample)))})


def write_lightgbm(path: str | Path, *, task: str = "classifier", trees: int = 20, leaves: int = 15,
                   rows: int = 500, features: int = 8, seed: int = 0) -> TabularModel:
    """A Booster (``multiclass`` over 3 classes, or ``regression``) in LightGBM's text format."""
    import lightgbm as lgb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y = _table(task, rows, features, seed)
    params: dict[str, Any] = {"num_leaves": leaves, "seed": seed, "num_threads": 1, "verbose": -1}
    params.update({"objective": "multiclass", "num_class": 3} if task == "classifier" else {"objective": "regression"})
    lgb.train(params, lgb.Dataset(x, label=y), trees).save_model(str(path))
    sample = _sample(x)
    booster = lgb.Booster(model_file=str(path))
    return TabularModel(path, "lightgbm", sample, {"predict": np.asarray(booster.predict(sample))})
