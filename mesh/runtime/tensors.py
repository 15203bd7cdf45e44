"""KServe V2 tensors <-> numpy, checked against a model's signature.

Requests may carry tensors raw (``raw_input_contents``, one entry per input, in
input order, little-endian, as tritonclient sends them) or typed (``contents``).
FP16 and BF16 have no typed field in V2, so they must be raw (as in Triton).
Responses are always raw (``raw_output_contents``), whatever the request used:
that is what Triton does and what tritonclient's ``as_numpy`` reads first; the
datatype and shape travel in each output's metadata.

BYTES tensors (strings) are numpy object arrays of ``bytes``. Raw, each element
is a 4-byte little-endian length followed by its bytes, elements in row-major
order (Triton's layout); typed, they travel in ``contents.bytes_contents``.
Outputs given as ``str`` are sent as UTF-8.
"""

from __future__ import annotations

import math
from typing import Any

import struct

import ml_dtypes
import numpy as np
from cachetools import LRUCache

from mesh.errors import InvalidArgument
from mesh.runtime.backends.base import Signature, TensorSpec

#: V2 datatype -> numpy dtype (little-endian).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_BY_DTYPE = {dt: name for name, dt in DATATYPES.items()}

#: Strings: not a fixed-size numpy dtype, so kept apart from DATATYPES.
BYTES = "BYTES"
#: Every V2 datatype the runtime serves.
V2_DATATYPES = frozenset(DATATYPES) | {BYTES}
_OBJECT = np.dtype(object)

#: Which ``InferTensorContents`` field carries each datatype when typed.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_LEN = struct.Struct("<I")


def pack_bytes(arr: np.ndarray) -> bytes:
    """Raw BYTES contents: each element length-prefixed (4 bytes, little-endian)."""
    parts: list[bytes] = []
    for item in np.asarray(arr, dtype=object).reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts += (_LEN.pack(len(b)), b)
    return b"".join(parts)


def unpack_bytes(data: bytes, count: int, where: str) -> np.ndarray:
    """``count`` length-prefixed elements from raw BYTES contents (an object array of bytes)."""
    out = np.empty(count, dtype=object)
    view = memoryview(data)
    pos, n = 0, len(view)
    for i in range(count):
        if pos + 4 > n:
            raise InvalidArgument(f"{where}: raw BYTES contents hold {i} elements, the shape needs {count}")
        (length,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + length > n:
            raise InvalidArgument(
                f"{where}: BYTES element {i} claims {length} bytes but only {n - pos} remain; each element is a "
                "4-byte little-endian length followed by that many bytes")
        out[i] = bytes(view[pos:pos + length])
        pos += length
    if pos != n:
        raise InvalidArgument(f"{where}: {n - pos} bytes left over after the {count} BYTES elements the shape needs")
    return out


def datatype_of(dtype: np.dtype[Any]) -> str:
    """V2 datatype of a numpy dtype (byte order ignored; object and string dtypes are BYTES)."""
    if np.dtype(dtype).kind in "OSU":
        return BYTES
    name = _BY_DTYPE.get(np.dtype(dtype).newbyteorder("<")) or _BY_DTYPE.get(np.dtype(dtype))
    if name is None:
        raise InvalidArgument(f"numpy dtype {dtype} has no KServe V2 datatype")
    return name


def shape_matches(expected: tuple[int, ...], got: tuple[int, ...]) -> bool:
    return len(expected) == len(got) and all(e in (-1, g) for e, g in zip(expected, got))


def _fmt_shape(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _check_header(model: str, spec: TensorSpec, datatype: str, shape: tuple[int, ...]) -> None:
    if datatype != spec.datatype and datatype not in spec.accepts:
        wanted = " or ".join((spec.datatype, *spec.accepts))
        raise InvalidArgument(
            f"model {model!r} input {spec.name!r}: expected datatype {wanted}, got {datatype or '(none)'}"
        )
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"model {model!r} input {spec.name!r}: shape {_fmt_shape(shape)} has a negative dimension")
    if not shape_matches(spec.shape, shape):
        raise InvalidArgument(
            f"model {model!r} input {spec.name!r}: expected shape {_fmt_shape(spec.shape)} (-1 = any), "
            f"got {_fmt_shape(shape)}"
        )


#: Most elements one input tensor may have (shape product): bounds what a request can
#: make the runtime allocate, whatever its dimensions claim.
MAX_TENSOR_ELEMENTS = 2**31


def element_count(model: str, name: str, shape: tuple[int, ...]) -> int:
    """The exact product of ``shape`` (Python ints: no int64 wrap-around), bounded."""
    count = math.prod(shape)
    if count > MAX_TENSOR_ELEMENTS:
        raise InvalidArgument(
            f"model {model!r} input {name!r}: shape {_fmt_shape(shape)} has {count} elements; "
            f"the limit is {MAX_TENSOR_ELEMENTS} per tensor")
    return count


#: Per signature (held, so its id cannot be reused while cached): input name -> (spec, dtype).
#: Built once per loaded model instead of searching the signature on every request.
_PLANS: LRUCache[int, tuple[Signature, dict[str, tuple[TensorSpec, np.dtype[Any]]]]] = LRUCache(maxsize=8192)


def _inputs_by_name(signature: Signature) -> dict[str, tuple[TensorSpec, np.dtype[Any]]]:
    hit = _PLANS.get(id(signature))
    if hit is not None and hit[0] is signature:
        return hit[1]
    plan = {t.name: (t, DATATYPES[t.datatype]) for t in signature.inputs if t.datatype in DATATYPES}
    _PLANS[id(signature)] = (signature, plan)
    return plan


def _decode_raw_fast(request: Any, signature: Signature) -> dict[str, np.ndarray] | None:
    """The common request (raw contents, every input once, all as the signature says),
    checked against the precomputed plan; None sends anything else to the full check."""
    raw = request.raw_input_contents
    plan = _inputs_by_name(signature)
    if not raw or len(raw) != len(request.inputs) or len(raw) != len(signature.inputs):
        return None
    out: dict[str, np.ndarray] = {}
    for tensor, data in zip(request.inputs, raw):
        entry = plan.get(tensor.name)
        if entry is None or tensor.name in out:
            return None
        spec, dtype = entry
        shape = tuple(tensor.shape)
        if (tensor.datatype != spec.datatype or len(shape) != len(spec.shape)
                or any(g < 0 or (e != -1 and e != g) for e, g in zip(spec.shape, shape))
                or len(data) != math.prod(shape) * dtype.itemsize or tensor.HasField("contents")):
            return None
        out[tensor.name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return out


def decode_inputs(request: Any, signature: Signature, model: str) -> dict[str, np.ndarray]:
    """The request's inputs as numpy arrays, each checked against ``signature``.

    ``request`` is an ``inference.ModelInferRequest``. Raises InvalidArgument
    naming the input and what was expected versus received.
    """
    fast = _decode_raw_fast(request, signature)
    if fast is not None:
        return fast
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"model {model!r}: {len(request.inputs)} inputs but {len(raw)} raw_input_contents entries; "
            "with raw contents every input needs exactly one entry, in input order"
        )
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        spec = signature.input(tensor.name)
        if spec is None and signature.any_input_name and len(signature.inputs) == 1 == len(request.inputs):
            spec = signature.inputs[0]
        if spec is None:
            known = ", ".join(repr(t.name) for t in signature.inputs)
            raise InvalidArgument(f"model {model!r} has no input {tensor.name!r} (its inputs: {known})")
        if spec.name in out:
            raise InvalidArgument(f"model {model!r}: input {tensor.name!r} is given twice")
        shape = tuple(int(d) for d in tensor.shape)
        _check_header(model, spec, tensor.datatype, shape)
        dtype = DATATYPES.get(tensor.datatype, _OBJECT)
        count = element_count(model, tensor.name, shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"model {model!r} input {tensor.name!r}: has typed contents although the request uses "
                    "raw_input_contents; send every input one way"
                )
            data = raw[i]
            if tensor.datatype == BYTES:
                out[spec.name] = unpack_bytes(data, count, f"model {model!r} input {tensor.name!r}").reshape(shape)
                continue
            if len(data) != count * dtype.itemsize:
                raise InvalidArgument(
                    f"model {model!r} input {tensor.name!r}: shape {_fmt_shape(shape)} of {tensor.datatype} needs "
                    f"{count * dtype.itemsize} bytes of raw contents, got {len(data)}"
                )
            out[spec.name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        else:
            out[spec.name] = _typed(model, tensor, tensor.datatype, dtype, shape, count)
    missing = [t.name for t in signature.inputs if t.name not in out]
    if missing:
        raise InvalidArgument(f"model {model!r}: missing input {', '.join(repr(m) for m in missing)}")
    return out


def _typed(model: str, tensor: Any, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...],
           count: int) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(
            f"model {model!r} input {tensor.name!r}: {datatype} has no typed contents field in KServe V2; "
            "send it in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    for other in _CONTENTS_FIELD.values():
        if other != field and len(getattr(tensor.contents, other)):
            raise InvalidArgument(
                f"model {model!r} input {tensor.name!r}: {datatype} data belongs in contents.{field}, "
                f"got contents.{other}"
            )
    if len(values) != count:
        raise InvalidArgument(
            f"model {model!r} input {tensor.name!r}: shape {_fmt_shape(shape)} needs {count} values in "
            f"contents.{field}, got {len(values)}"
        )
    if datatype == BYTES:
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    arr = np.asarray(values)
    if arr.size and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidArgument(
                f"model {model!r} input {tensor.name!r}: values outside the range of {datatype}"
            )
    return arr.astype(dtype, copy=False).reshape(shape)


def encode_outputs(response: Any, outputs: dict[str, np.ndarray], signature: Signature) -> None:
    """Appends ``outputs`` to an ``inference.ModelInferResponse``, raw, in signature order."""
    order = {t.name: i for i, t in enumerate(signature.outputs)}
    for name in sorted(outputs, key=lambda n: order.get(n, len(order))):
        arr = np.asarray(outputs[name])
        spec = signature.output(name)
        datatype = datatype_of(arr.dtype)
        if spec is not None and spec.datatype != datatype and BYTES not in (datatype, spec.datatype):
            arr = arr.astype(DATATYPES[spec.datatype])  # a backend returning wider types
            datatype = spec.datatype
        t = response.outputs.add()
        t.name = name
        t.datatype = datatype
        t.shape.extend(arr.shape)
        response.raw_output_contents.append(_raw(arr, datatype))


def _raw(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == BYTES:
        return pack_bytes(arr)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def requested_outputs(request: Any, signature: Signature, model: str) -> tuple[str, ...]:
    """Names of the outputs the request asks for (all when it names none)."""
    if not request.outputs:
        return ()
    names = tuple(o.name for o in request.outputs)
    for name in names:
        if signature.output(name) is None:
            known = ", ".join(repr(t.name) for t in signature.outputs)
            raise InvalidArgument(f"model {model!r} has no output {name!r} (its outputs: {known})")
    return names


def encode_inputs_typed(request: Any, inputs: dict[str, np.ndarray]) -> None:
    """Test and client helper: adds inputs as typed ``contents`` (not raw)."""
    for name, arr in inputs.items():
        datatype = datatype_of(arr.dtype)
        field = _CONTENTS_FIELD.get(datatype)
        if field is None:
            raise InvalidArgument(f"{datatype} cannot be sent as typed contents; send it raw")
        t = request.inputs.add()
        t.name, t.datatype = name, datatype
        t.shape.extend(arr.shape)
        values = arr.reshape(-1).tolist()
        if datatype == BYTES:
            values = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        getattr(t.contents, field).extend(values)


def encode_inputs_raw(request: Any, inputs: dict[str, np.ndarray]) -> None:
    """Test and client helper: adds inputs as ``raw_input_contents``."""
    for name, arr in inputs.items():
        t = request.inputs.add()
        t.name, t.datatype = name, datatype_of(arr.dtype)
        t.shape.extend(arr.shape)
        request.raw_input_contents.append(_raw(arr, t.datatype))


def decode_outputs(response: Any) -> dict[str, np.ndarray]:
    """Test and client helper: a response's outputs as numpy (raw or typed)."""
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(response.outputs):
        shape = tuple(t.shape)
        if t.datatype == BYTES:
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if i < len(response.raw_output_contents):
                arr = unpack_bytes(response.raw_output_contents[i], count, f"output {t.name!r}")
            else:
                arr = np.empty(count, dtype=object)
                arr[:] = list(t.contents.bytes_contents)
            out[t.name] = arr.reshape(shape)
            continue
        dtype = DATATYPES[t.datatype]
        if i < len(response.raw_output_contents):
            out[t.name] = np.frombuffer(response.raw_output_contents[i], dtype=dtype).reshape(shape)
        else:
            field = _CONTENTS_FIELD[t.datatype]
            out[t.name] = np.asarray(getattr(t.contents, field)).astype(dtype).reshape(shape)
    return out
