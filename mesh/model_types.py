"""Model-type names as KServe and ModelMesh users write them, reduced to one spelling.

A model type names the backend that loads it. Users bring the names of their old
platform: KServe's ``modelFormat.name`` (``sklearn``, ``xgboost``, ``lightgbm``,
``onnx``, ``pytorch``...), Triton's platforms (``onnxruntime_onnx``,
``pytorch_libtorch``), or a library's own name (``scikit-learn``). Built-in names are
case-insensitive. A custom type written ``package.module:Class`` (a plugin class,
README "Custom models") is kept exactly as written: Python names are case-sensitive.

Runtimes advertise canonical names; routers compare canonical names when they place.
"""

from __future__ import annotations

#: The types meshserve's own backends load, in the order a runtime lists them.
BUILTIN_TYPES = ("onnx", "pytorch", "sklearn", "xgboost", "lightgbm")

#: Other spellings of the built-in types (lower case).
ALIASES = {
    "onnxruntime": "onnx", "onnxruntime_onnx": "onnx", "ort": "onnx",
    "torchscript": "pytorch", "pytorch_libtorch": "pytorch", "libtorch": "pytorch",
    "scikit-learn": "sklearn", "scikit_learn": "sklearn", "scikitlearn": "sklearn",
    "xgb": "xgboost",
    "lgbm": "lightgbm", "lgb": "lightgbm",
}

#: The pip extra that brings each built-in type's library (for error messages).
EXTRA_FOR = {"onnx": "cpu", "pytorch": "cpu", "sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm"}


def is_class_path(name: str) -> bool:
    """``package.module:Class``: a custom model class named by its import path."""
    return ":" in name


def canonical_model_type(name: str) -> str:
    """The one spelling of ``name``: lower case, aliases resolved (plugin entry
    point names are lower-cased too); a ``module:Class`` type exactly as written."""
    s = name.strip()
    if is_class_path(s):
        return s
    low = s.lower()
    return ALIASES.get(low, low)
