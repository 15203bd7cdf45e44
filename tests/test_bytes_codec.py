"""BYTES tensors in the V2 codec: Triton's raw layout and typed bytes_contents."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as v2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from mesh.errors import InvalidArgument
from mesh.runtime.backends.base import Signature, TensorSpec
from mesh.runtime.tensors import decode_inputs, decode_outputs, encode_inputs_raw, encode_inputs_typed, encode_outputs

SIG = Signature((TensorSpec("TEXT", "BYTES", (-1, 2)),), (TensorSpec("OUT", "BYTES", (-1, 2)),))
VALUES = np.array([[b"a", b""], ["\u00e9t\u00e9".encode(), b"\x00\xff"]], dtype=object)


def test_raw_bytes_are_tritons_layout_both_ways() -> None:
    req = v2.ModelInferRequest()
    encode_inputs_raw(req, {"TEXT": VALUES})
    assert req.raw_input_contents[0] == serialize_byte_tensor(VALUES).item()
    got = decode_inputs(req, SIG, "m")["TEXT"]
    assert got.shape == (2, 2) and got.tolist() == VALUES.tolist()
    resp = v2.ModelInferResponse()
    encode_outputs(resp, {"OUT": np.array([["x", "y"], ["\u00fc", ""]], dtype=object)}, SIG)
    assert resp.outputs[0].datatype == "BYTES"
    flat = deserialize_bytes_tensor(resp.raw_output_contents[0])
    assert flat.tolist() == [b"x", b"y", "\u00fc".encode(), b""]
    assert decode_outputs(resp)["OUT"].tolist() == [[b"x", b"y"], ["\u00fc".encode(), b""]]


def test_typed_bytes_contents_decode() -> None:
    req = v2.ModelInferRequest()
    encode_inputs_typed(req, {"TEXT": VALUES})
    assert list(req.inputs[0].contents.bytes_contents) == VALUES.reshape(-1).tolist()
    assert decode_inputs(req, SIG, "m")["TEXT"].tolist() == VALUES.tolist()


@pytest.mark.parametrize(("raw", "message"), [
    (b"\x01\x00\x00\x00a", "hold 1 elements, the shape needs 2"),
    (b"\x01\x00\x00", "hold 0 elements"),
    (b"\x09\x00\x00\x00abc", "claims 9 bytes but only 3 remain"),
    (b"\x01\x00\x00\x00a\x01\x00\x00\x00bzz", "2 bytes left over"),
])
def test_malformed_raw_bytes_are_named(raw: bytes, message: str) -> None:
    req = v2.ModelInferRequest()
    req.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 2])
    req.raw_input_contents.append(raw)
    with pytest.raises(InvalidArgument, match=message):
        decode_inputs(req, SIG, "m")


def test_typed_count_must_match_shape() -> None:
    req = v2.ModelInferRequest()
    t = req.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 2])
    t.contents.bytes_contents.append(b"only one")
    with pytest.raises(InvalidArgument, match="needs 2 values in contents.bytes_contents, got 1"):
        decode_inputs(req, SIG, "m")
