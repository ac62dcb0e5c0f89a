"""A JSON number that the tensor's float type cannot hold is refused, as an integer past its range is."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from serving.app import create_app
from serving.errors import BadRequest
from serving.protocol.request_values import parse_json
from serving.protocol.tensors import from_json_data
from serving.settings import Settings
from tests.repo_fixtures import write_onnx_entry


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("FP32", 1e40), ("FP32", -3.5e38), ("FP32", 10**40), ("FP16", 65520.0), ("FP16", -1e5)],
)
def test_a_finite_json_number_past_a_float_types_range_is_a_bad_request_not_an_infinity(datatype, value):
    """``1e40`` in an FP32 tensor became +inf (answered as ``null``, a RuntimeWarning in the log) where
    ``300`` in a UINT8 one, or ``1e400`` written as an integer, is a 400 naming the range."""
    with pytest.raises(BadRequest, match=rf"tensor 'x': values out of range for {datatype} \["):
        from_json_data([0.5, value], datatype, [2], tensor="x")


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_nan_infinities_and_the_largest_finite_values_still_decode_without_a_warning(datatype):
    largest = float(np.finfo(datatype.replace("FP", "float")).max)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = parse_json(f"[NaN, Infinity, -Infinity, {largest!r}, 1e-400]".encode(), "body")
        array = from_json_data(data, datatype, [5], tensor="x")
    assert np.isnan(array[0]) and array[1] == np.inf and array[2] == -np.inf
    assert array[3] == largest and array[4] == 0.0  # (too small: zero, as C's cast makes it)


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
@pytest.mark.parametrize("literal", ["1e400", "-1e309"])
def test_a_number_past_any_double_is_refused_though_json_reads_it_as_an_infinity(datatype, literal):
    """Python's JSON makes ``1e400`` an infinity, which then passed as if the client had written
    ``Infinity`` (Triton's parser refuses such a number)."""
    data = parse_json(f"[0.5, {literal}]".encode(), "body")
    with pytest.raises(BadRequest, match=rf"tensor 'x': values out of range for {datatype} \["):
        from_json_data(data, datatype, [2], tensor="x")


def test_json_bodies_read_as_before():
    assert parse_json(b'{"a": [1, 2.5, "x", null, true]}', "body") == {"a": [1, 2.5, "x", None, True]}
    assert parse_json('{"a": 1}'.encode("utf-16"), "body") == {"a": 1}  # detected as json.loads does
    for bad in (b"\xff", b"{", b"[1e99999999999999999999x]"):
        with pytest.raises(BadRequest):
            parse_json(bad, "body")


def _identity_fp32(root: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "same",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    config = """name: "same"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }]
"""
    return write_onnx_entry(root, graph, config)


def test_an_infer_request_with_an_fp32_value_past_its_range_is_a_400_and_not_a_null_answer(tmp_path: Path):
    settings = Settings(model_repository=_identity_fp32(tmp_path), grpc_port=0, intra_op_threads=1)
    with TestClient(create_app(settings)) as client:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 1e40]}]}
        answer = client.post("/v2/models/same/infer", json=body)
        assert answer.status_code == 400, answer.text
        assert "values out of range for FP32" in answer.json()["error"]
        raw = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 1e400]}]}'
        answer = client.post("/v2/models/same/infer", content=raw)
        assert answer.status_code == 400, answer.text
        body["inputs"][0]["data"] = [1.0, 3.0e38]
        answer = client.post("/v2/models/same/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [1.0, pytest.approx(3.0e38, rel=1e-7)]
