"""Unit tests (no process): the V2 tensor codec and the cache's victim choice."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from mesh.clock import FakeClock
from mesh.errors import InvalidArgument, ResourceExhausted
from mesh.runtime.backends.base import Signature, TensorSpec
from mesh.runtime.cache import EntryView, ModelCache, lru_victims
from mesh.runtime.settings import RuntimeSettings, parse_labels
from mesh.runtime.tensors import (
    DATATYPES,
    decode_inputs,
    decode_outputs,
    encode_inputs_raw,
    encode_inputs_typed,
    encode_outputs,
)

SIG = Signature(
    (TensorSpec("A", "FP32", (-1, 3)), TensorSpec("B", "INT64", (2,))),
    (TensorSpec("Y", "FP32", (-1, 3)),),
)


def _request(inputs: dict[str, np.ndarray], raw: bool) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    (encode_inputs_raw if raw else encode_inputs_typed)(req, inputs)
    return req


TYPED = [d for d in DATATYPES if d not in ("FP16", "BF16")]


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_datatype_round_trips(datatype: str, raw: bool) -> None:
    if not raw and datatype not in TYPED:
        pytest.skip("FP16/BF16 have no typed field in V2")
    dtype = DATATYPES[datatype]
    values = np.arange(-3, 3).reshape(2, 3)
    arr = (values > 0) if datatype == "BOOL" else (values % 7 if datatype.startswith("UINT") else values)
    arr = np.asarray(arr).astype(dtype)
    sig = Signature((TensorSpec("X", datatype, (-1, 3)),), (TensorSpec("X", datatype, (-1, 3)),))
    got = decode_inputs(_request({"X": arr}, raw), sig, "m")["X"]
    assert got.dtype == dtype and got.shape == (2, 3) and np.array_equal(got, arr)
    resp = pb.ModelInferResponse()
    encode_outputs(resp, {"X": got}, sig)
    assert resp.outputs[0].datatype == datatype and list(resp.outputs[0].shape) == [2, 3]
    assert np.array_equal(decode_outputs(resp)["X"], arr)


def _bad(inputs: dict[str, np.ndarray], raw: bool = True) -> str:
    with pytest.raises(InvalidArgument) as e:
        decode_inputs(_request(inputs, raw), SIG, "m")
    return str(e.value)


def test_bad_inputs_name_the_problem() -> None:
    a = np.zeros((2, 3), np.float32)
    b = np.zeros(2, np.int64)
    assert "missing input 'B'" in _bad({"A": a})
    assert "no input 'C'" in _bad({"A": a, "B": b, "C": b})
    msg = _bad({"A": a.astype(np.float64), "B": b})
    assert "'A'" in msg and "expected datatype FP32, got FP64" in msg
    msg = _bad({"A": np.zeros((2, 4), np.float32), "B": b})
    assert "'A'" in msg and "expected shape [-1, 3]" in msg and "got [2, 4]" in msg
    msg = _bad({"A": np.zeros((2, 3, 1), np.float32), "B": b}, raw=False)
    assert "got [2, 3, 1]" in msg


def test_raw_length_and_typed_count_mismatches() -> None:
    req = _request({"A": np.zeros((2, 3), np.float32), "B": np.zeros(2, np.int64)}, raw=True)
    req.raw_input_contents[0] = b"\0" * 20
    with pytest.raises(InvalidArgument, match=r"'A'.*needs 24 bytes of raw contents, got 20"):
        decode_inputs(req, SIG, "m")
    req = _request({"A": np.zeros((2, 3), np.float32), "B": np.zeros(2, np.int64)}, raw=False)
    req.inputs[0].contents.fp32_contents.pop()
    with pytest.raises(InvalidArgument, match=r"'A'.*needs 6 values in contents.fp32_contents, got 5"):
        decode_inputs(req, SIG, "m")
    req = _request({"A": np.zeros((2, 3), np.float32), "B": np.zeros(2, np.int64)}, raw=True)
    del req.raw_input_contents[1]
    with pytest.raises(InvalidArgument, match="2 inputs but 1 raw_input_contents"):
        decode_inputs(req, SIG, "m")


def test_typed_fp16_is_refused_and_out_of_range_ints_too() -> None:
    sig = Signature((TensorSpec("H", "FP16", (2,)),), (TensorSpec("H", "FP16", (2,)),))
    req = pb.ModelInferRequest()
    t = req.inputs.add(name="H", datatype="FP16", shape=[2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(InvalidArgument, match="send it in raw_input_contents"):
        decode_inputs(req, sig, "m")
    sig8 = Signature((TensorSpec("I", "INT8", (1,)),), (TensorSpec("I", "INT8", (1,)),))
    req = pb.ModelInferRequest()
    req.inputs.add(name="I", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    with pytest.raises(InvalidArgument, match="outside the range of INT8"):
        decode_inputs(req, sig8, "m")


# -- the cache --------------------------------------------------------------


def test_lru_victims_oldest_first_skipping_busy() -> None:
    views = [EntryView("a", 10, 3.0, 0), EntryView("b", 10, 1.0, 2), EntryView("c", 10, 2.0, 0),
             EntryView("d", 10, 4.0, 0)]
    assert lru_victims(views, 0) == []
    assert lru_victims(views, 5) == ["c"]
    assert lru_victims(views, 15) == ["c", "a"]
    assert lru_victims(views, 30) == ["c", "a", "d"]
    assert lru_victims(views, 31) is None  # "b" is busy


def test_cache_accounts_max_of_predicted_and_measured_and_evicts_lru() -> None:
    clock = FakeClock()
    cache = ModelCache(100, clock)
    for name, measured in (("a", 10), ("b", 40), ("c", 20)):
        assert cache.reserve(name, "onnx", 30) == []
        assert cache.commit(name, object(), measured) == []
        clock.advance(1)
    assert [e.size for e in cache.loaded()] == [30, 40, 30] and cache.used == 100
    cache.touch(cache.get("a"))  # a is now the most recently used
    evicted = cache.reserve("d", "onnx", 50)
    assert [e.model_id for e in evicted] == ["b", "c"]
    assert cache.used == 80 and cache.loading_count() == 1


def test_cache_refuses_what_cannot_fit_with_the_numbers() -> None:
    cache = ModelCache(100, FakeClock())
    cache.reserve("a", "onnx", 60)
    cache.commit("a", object(), 0)
    cache.get("a").in_flight = 1
    with pytest.raises(ResourceExhausted) as e:
        cache.reserve("b", "onnx", 50)
    msg = str(e.value)
    assert "'b'" in msg and "needs 50 bytes" in msg and "40 bytes" in msg and "100 bytes" in msg
    assert cache.get("b") is None and cache.used == 60


def test_settings_parse_labels_sizes_and_reject_nonsense() -> None:
    assert parse_labels("gpu=h100, team=a") == {"gpu": "h100", "team": "a"}
    s = RuntimeSettings(capacity="1Gi", labels="a=b")
    assert s.capacity == 2**30 and s.labels == {"a": "b"} and s.instance_id
    for bad in ({"device": "tpu"}, {"labels": "novalue"}, {"listen": "nohost"}, {"lease_ttl_s": 0},
                {"instance_id": "a/b"}, {"size_prediction_factor": 0.5}, {"model_types": "onnx,tensorflow"}):
        with pytest.raises(ValueError):
            RuntimeSettings(**bad)


def test_backends_by_model_type() -> None:
    from mesh.runtime.backends import BackendRegistry

    onnx_only = BackendRegistry.default(1, ("onnx",))
    assert onnx_only.model_types == ("onnx",) and onnx_only.get("ONNX").model_type == "onnx"
    with pytest.raises(InvalidArgument, match="unknown model type 'pytorch': this runtime loads onnx"):
        onnx_only.get("pytorch")
    assert BackendRegistry.default().get("torchscript").model_type == "pytorch"


def test_request_rate_counts_the_last_minute() -> None:
    from mesh.runtime.rate import RequestRate

    clock = FakeClock()
    rate = RequestRate(clock)
    for _ in range(30):
        rate.add()
        clock.advance(1)
    assert rate.per_minute() == 30
    clock.advance(45)
    assert 0 < rate.per_minute() < 30
    clock.advance(60)
    assert rate.per_minute() == 0
