"""KServe V1 ``:predict`` bodies <-> V2 protobuf messages, typed by the model's signature.

V1 carries no datatypes or input names, so the model's ModelMetadata says them.
A model with one input takes ``instances`` as its rows (batch = number of
instances); with several, each instance is an object keyed by input name. The
request may say ``inputs`` instead: a list (as ``instances``) or an object of
columns keyed by input name (TensorFlow Serving's columnar form). One output
gives ``predictions`` as its rows; several give one object per row keyed by
output name.
"""

from __future__ import annotations

from typing import Any

import orjson
from tritonclient.grpc import service_pb2 as pb

from mesh.errors import FailedPrecondition, InvalidArgument
from router.rest import tensors
from router.rest.v2 import load_json, output_contents, parse_response


def _tensor(req: Any, name: str, datatype: str, values: Any, field: str) -> None:
    if datatype == "BYTES":
        raw, count = tensors.encode_bytes(values, field)
        shape: tuple[int, ...] = tensors.nesting(values, count, field)
    else:
        arr = tensors.array_from_json(values, datatype, field)
        raw, shape = arr.tobytes(), arr.shape
    t = req.inputs.add(name=name, datatype=datatype)
    t.shape.extend(shape)
    req.raw_input_contents.append(raw)


def decode_predict(body: bytes, model: str, signature: Any) -> bytes:
    """A V1 predict body as a serialized ModelInferRequest for ``model``."""
    doc = load_json(body, "request body")
    key = "instances" if "instances" in doc else "inputs" if "inputs" in doc else None
    if key is None:
        raise InvalidArgument('the body needs "instances": [...] (or "inputs"), e.g. {"instances": [[1.0, 2.0]]}')
    data = doc[key]
    specs = list(signature.inputs)
    if not specs:
        raise FailedPrecondition(f"model {model!r} reports no inputs in its metadata; use the V2 endpoint")
    names = ", ".join(repr(s.name) for s in specs)
    req = pb.ModelInferRequest(model_name=model)
    if key == "inputs" and isinstance(data, dict):  # columnar
        for s in specs:
            if s.name not in data:
                raise InvalidArgument(f"inputs has no {s.name!r} (model {model!r} takes {names})")
            _tensor(req, s.name, s.datatype, data[s.name], f"inputs.{s.name}")
        return req.SerializeToString()
    if not isinstance(data, list) or not data:
        raise InvalidArgument(f"{key} must be a non-empty list (one entry per instance)")
    if len(specs) == 1:
        _tensor(req, specs[0].name, specs[0].datatype, data, key)
        return req.SerializeToString()
    for i, inst in enumerate(data):
        if not isinstance(inst, dict):
            raise InvalidArgument(f"{key}[{i}]: model {model!r} has {len(specs)} inputs ({names}), so each "
                                  "instance must be an object keyed by input name")
        for s in specs:
            if s.name not in inst:
                raise InvalidArgument(f"{key}[{i}] has no {s.name!r} (model {model!r} takes {names})")
    for s in specs:
        _tensor(req, s.name, s.datatype, [inst[s.name] for inst in data], f"{key}[*].{s.name}")
    return req.SerializeToString()


def encode_predictions(raw: bytes) -> bytes:
    """A ModelInferResponse as ``{"predictions": [...]}``."""
    resp = parse_response(raw)
    outs = [(t.name, tensors.array_from_raw(data, t.datatype, tuple(t.shape), f"output {t.name!r}"))
            for t, data in output_contents(resp)]
    if len(outs) == 1:
        return orjson.dumps({"predictions": outs[0][1]}, option=orjson.OPT_SERIALIZE_NUMPY)
    try:
        rows = {len(v) for _, v in outs}
    except TypeError:  # a 0-d output has no rows
        rows = set()
    if len(rows) != 1:
        raise FailedPrecondition(f"model {resp.model_name!r}: its outputs do not share a batch dimension, so they "
                                 "cannot be V1 predictions; use POST /v2/models/<name>/infer")
    n = rows.pop()
    predictions = [{name: v[i] for name, v in outs} for i in range(n)]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
