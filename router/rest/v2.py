"""KServe V2 REST (Open Inference Protocol) bodies <-> V2 protobuf messages.

With Triton's binary tensor extension: when the ``Inference-Header-Content-Length``
header is present, the body is that many bytes of JSON followed by raw tensor
bytes; an input whose ``parameters.binary_data_size`` is set takes its bytes from
there, in input order. Outputs come back binary when asked (per output
``parameters.binary_data``, else the request's ``parameters.binary_data_output``),
appended after the JSON with ``binary_data_size`` on each, as tritonclient.http
expects; otherwise as flat JSON ``data``. Inputs always travel to the runtime
as ``raw_input_contents`` (FP16/BF16 have no typed field in V2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from tritonclient.grpc import service_pb2 as pb

from mesh.errors import Internal, InvalidArgument
from mesh.runtime.tensors import decode_outputs
from router.rest import tensors

HEADER_LENGTH = "Inference-Header-Content-Length"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class InferRequest:
    #: The serialized ``inference.ModelInferRequest``.
    message: bytes
    #: Requested outputs and whether each is wanted binary.
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    #: Binary for outputs not named in ``binary_outputs``.
    binary_default: bool = False
    #: ``parameters.timeout`` (Triton's: microseconds), in seconds; None if not given.
    timeout_s: float | None = None


def load_json(data: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    p = obj.get("parameters")
    if p is None:
        return {}
    if not isinstance(p, dict):
        raise InvalidArgument(f"{where}.parameters must be an object")
    return p


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise InvalidArgument(f"{where}.shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """(JSON part, binary tail) of a request body."""
    view = memoryview(body)
    if header_length is None:
        return view, view[:0]
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidArgument(f"{HEADER_LENGTH} must be a number of bytes, got {header_length!r}") from None
    if not 0 <= n <= len(body):
        raise InvalidArgument(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
    return view[:n], view[n:]


def decode_request(body: bytes, header_length: str | None, model: str, version: str) -> InferRequest:
    head, tail = split_body(body, header_length)
    doc = load_json(head, "request body" if header_length is None else f"the first {len(head)} bytes (JSON header)")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("inputs must be a non-empty list of tensors {name, shape, datatype, data}")
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    rid = doc.get("id")
    if rid is not None:
        if not isinstance(rid, str):
            raise InvalidArgument("id must be a string")
        req.id = rid
    offset = 0
    for i, t in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise InvalidArgument(f"{where} must be an object {{name, shape, datatype, data}}")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"{where}.name must be a non-empty string")
        datatype = tensors.check_datatype(t.get("datatype"), f"{where}.datatype")
        shape = _shape(t.get("shape"), where)
        size = _params(t, where).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgument(f"{where}.parameters.binary_data_size must be a non-negative integer")
            if "data" in t:
                raise InvalidArgument(f"{where} has both data and binary_data_size; send one")
            if offset + size > len(tail):
                raise InvalidArgument(
                    f"{where}.parameters.binary_data_size is {size} but only {len(tail) - offset} bytes of binary "
                    f"data are left (set {HEADER_LENGTH} to the JSON header's length)")
            raw: bytes | memoryview = tail[offset : offset + size]
            offset += size
            tensors.check_raw_size(raw, datatype, shape, f"{where} ({name!r})")
        elif "data" in t:
            raw = tensors.raw_from_json(t["data"], datatype, shape, f"{where}.data ({name!r})")
        else:
            raise InvalidArgument(f"{where} ({name!r}) has no data (nor parameters.binary_data_size)")
        tensor = req.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(shape)
        req.raw_input_contents.append(bytes(raw))
    if offset != len(tail):
        raise InvalidArgument(f"{len(tail) - offset} bytes of binary data after the inputs' binary_data_size total")
    binary_outputs: dict[str, bool] = {}
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidArgument("outputs must be a list of {name, parameters?}")
        for i, o in enumerate(outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidArgument(f"outputs[{i}] must be an object with a string name")
            binary = _params(o, f"outputs[{i}]").get("binary_data", False)
            if not isinstance(binary, bool):
                raise InvalidArgument(f"outputs[{i}].parameters.binary_data must be true or false")
            binary_outputs[o["name"]] = binary
            req.outputs.add(name=o["name"])
    params = _params(doc, "request")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidArgument("parameters.binary_data_output must be true or false")
    timeout_us = params.get("timeout")
    if timeout_us is not None and (not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us <= 0):
        raise InvalidArgument("parameters.timeout must be a positive integer (microseconds)")
    return InferRequest(req.SerializeToString(), binary_outputs, binary_default,
                        timeout_us / 1e6 if timeout_us else None)


def parse_response(raw: bytes) -> Any:
    try:
        return pb.ModelInferResponse.FromString(raw)
    except Exception:  # protobuf's DecodeError and friends
        raise Internal("the runtime sent an unreadable ModelInferResponse") from None


def output_contents(resp: Any) -> list[tuple[Any, bytes]]:
    """(output tensor metadata, its raw bytes) for each output; typed contents are packed raw."""
    raws = list(resp.raw_output_contents)
    if len(raws) < len(resp.outputs):
        typed = decode_outputs(resp)  # a runtime answering with typed contents
        return [(t, raws[i] if i < len(raws) else typed[t.name].astype(typed[t.name].dtype.newbyteorder("<")).tobytes())
                for i, t in enumerate(resp.outputs)]
    return list(zip(resp.outputs, raws))


def encode_response(raw: bytes, request: InferRequest) -> tuple[bytes, int | None]:
    """(body, JSON header length if binary outputs follow it)."""
    resp = parse_response(raw)
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        doc["id"] = resp.id
    outputs, chunks = [], []
    for t, data in output_contents(resp):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if request.binary_outputs.get(t.name, request.binary_default):
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = tensors.array_from_raw(data, t.datatype, None, f"output {t.name!r}")  # flat
        outputs.append(entry)
    doc["outputs"] = outputs
    head = orjson.dumps(doc, option=_NUMPY)
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def metadata_json(resp: Any) -> bytes:
    """A ModelMetadataResponse as V2 REST JSON."""
    def specs(ts: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]

    return orjson.dumps({"name": resp.name, "versions": list(resp.versions), "platform": resp.platform,
                         "inputs": specs(resp.inputs), "outputs": specs(resp.outputs)})

