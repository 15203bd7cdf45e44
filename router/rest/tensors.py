"""Tensor data in REST bodies <-> the raw little-endian bytes V2 messages carry.

JSON ``data`` (flat or nested, row-major) is checked against its datatype: a
number that the type cannot hold exactly (1.5 as INT32, 300 as INT8, 2 as
BOOL) is an error naming the field, never a silent cast. BYTES elements are
sent raw as Triton does: each a 4-byte little-endian length, then its bytes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from mesh.errors import InvalidArgument
from mesh.runtime.tensors import DATATYPES

#: Every datatype the REST codecs accept (the runtime decides what a model takes).
SUPPORTED = (*DATATYPES, "BYTES")


def _fmt(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_datatype(datatype: Any, field: str) -> str:
    if not isinstance(datatype, str) or datatype not in SUPPORTED:
        raise InvalidArgument(f"{field}: unknown datatype {datatype!r}; use one of {', '.join(SUPPORTED)}")
    return datatype


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)  # np.prod costs ~15 us a call: this is per tensor on the hot path


def array_from_json(data: Any, datatype: str, field: str) -> np.ndarray:
    """JSON values (nested lists or a scalar) as an array of ``datatype``; its shape is the nesting."""
    if datatype == "BYTES":
        raise InvalidArgument(f"{field}: BYTES data is a list of strings, not numbers")  # callers use encode_bytes
    try:
        a = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{field}: nested lists must be rectangular (every row the same length)") from None
    dtype = DATATYPES[datatype]
    kind = a.dtype.kind
    if kind not in "biuf":
        raise InvalidArgument(f"{field}: {datatype} data must be numbers{' or booleans' if datatype == 'BOOL' else ''}, "
                              f"got {_describe(a)}")
    if a.size:
        if dtype.kind == "b":
            if kind != "b" and not np.isin(a, (0, 1)).all():
                raise InvalidArgument(f"{field}: BOOL data must be true/false (or 0/1)")
        elif dtype.kind in "iu":
            if kind == "f" and not np.all(np.mod(a, 1) == 0):
                raise InvalidArgument(f"{field}: {datatype} data must be whole numbers, got a fraction")
            info = np.iinfo(dtype)
            if a.min() < info.min or a.max() > info.max:
                raise InvalidArgument(f"{field}: values outside the range of {datatype} ({info.min}..{info.max})")
    return a.astype(dtype, copy=False)


def _describe(a: np.ndarray) -> str:
    if a.dtype.kind == "U":
        return "strings"
    if a.dtype.kind == "O":
        return "mixed values (objects, nulls or ragged rows)"
    return str(a.dtype)


def _flatten(data: Any, out: list[Any]) -> None:
    if isinstance(data, list):
        for item in data:
            _flatten(item, out)
    else:
        out.append(data)


def nesting(data: Any, count: int, field: str) -> tuple[int, ...]:
    """The shape of nested lists of ``count`` strings (a BYTES tensor in JSON)."""
    try:
        shape = tuple(np.asarray(data, dtype=object).shape)
    except ValueError:
        shape = ()
    if element_count(shape) != count:  # ragged rows make a 1-D array of lists
        raise InvalidArgument(f"{field}: nested lists must be rectangular (every row the same length)")
    return shape


def encode_bytes(data: Any, field: str) -> tuple[bytes, int]:
    """BYTES JSON data (strings, flat or nested) as raw length-prefixed bytes, and the element count."""
    flat: list[Any] = []
    _flatten(data, flat)
    parts = []
    for i, item in enumerate(flat):
        if isinstance(item, str):
            b = item.encode()
        elif isinstance(item, bytes):
            b = item
        else:
            raise InvalidArgument(f"{field}[{i}]: BYTES elements must be strings, got {type(item).__name__}")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts), len(flat)


def decode_bytes(raw: bytes | memoryview, field: str) -> list[bytes]:
    """Raw BYTES contents (length-prefixed elements) as a list."""
    out = []
    pos, n = 0, len(raw)
    while pos < n:
        if pos + 4 > n:
            raise InvalidArgument(f"{field}: BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > n:
            raise InvalidArgument(f"{field}: a BYTES element of {size} bytes runs past the end of the data")
        out.append(bytes(raw[pos : pos + size]))
        pos += size
    return out


def raw_from_json(data: Any, datatype: str, shape: tuple[int, ...], field: str) -> bytes:
    """V2 JSON ``data`` for a tensor of ``shape`` as raw bytes; the count must match."""
    need = element_count(shape)
    if datatype == "BYTES":
        raw, got = encode_bytes(data, field)
    else:
        arr = array_from_json(data, datatype, field)
        raw, got = arr.tobytes(), arr.size
    if got != need:
        raise InvalidArgument(f"{field}: shape {_fmt(shape)} needs {need} values, got {got}")
    return raw


def check_raw_size(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], field: str) -> None:
    """Binary data for a fixed-size datatype must be exactly shape x itemsize bytes."""
    if datatype == "BYTES":
        got = len(decode_bytes(raw, field))
        if got != element_count(shape):
            raise InvalidArgument(f"{field}: shape {_fmt(shape)} needs {element_count(shape)} BYTES elements, got {got}")
        return
    need = element_count(shape) * DATATYPES[datatype].itemsize
    if len(raw) != need:
        raise InvalidArgument(f"{field}: shape {_fmt(shape)} of {datatype} needs {need} bytes of binary data, "
                              f"got {len(raw)}")


def array_from_raw(raw: bytes, datatype: str, shape: tuple[int, ...] | None, field: str) -> Any:
    """Raw output contents as something orjson writes as JSON (numpy with OPT_SERIALIZE_NUMPY, or
    lists): nested by ``shape``, or flat when it is None."""
    if datatype == "BYTES":
        items = [b.decode(errors="replace") for b in decode_bytes(raw, field)]
        return items if shape is None else np.array(items, dtype=object).reshape(shape).tolist()
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"{field}: the runtime sent unknown datatype {datatype!r}")
    arr = np.frombuffer(raw, dtype=dtype)
    if shape is not None:
        arr = arr.reshape(shape)
    if datatype == "BF16":
        arr = arr.astype(np.float32)  # JSON numbers; orjson has no bfloat16
    return arr
