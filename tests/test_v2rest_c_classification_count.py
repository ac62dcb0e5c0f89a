"""A classification count past int64 is the client's 400 over HTTP and gRPC: Triton reads the count as
gRPC's int64_param, and ``--backend triton`` forwards it in one (tritonclient.grpc raised ValueError
on 2**63: a 500 with a traceback), while the embedded backend ran 2**70 as "every class"."""

from __future__ import annotations

import json

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from serving.errors import BadRequest
from serving.protocol.grpc_codec import requested_outputs
from serving.protocol.v2_codec import parse_infer

MAX_CLASSIFICATION = 2**63 - 1  # int64, as Triton and tritonclient.grpc carry the count


def _http_body(count: object) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 3, 2]}
    output = {"name": "y", "parameters": {"classification": count}}
    return json.dumps({"inputs": [tensor], "outputs": [output]}).encode()


@pytest.mark.parametrize("count", [2**63, 2**64 - 1, 2**64, 2**70])
def test_an_http_classification_count_past_int64_is_refused_naming_the_output(count: int) -> None:
    with pytest.raises(BadRequest, match=r"output 'y': classification must be a non-negative integer"):
        parse_infer(_http_body(count), None, "m", "")


def test_the_largest_http_classification_count_accepted_is_one_tritonclient_grpc_can_forward() -> None:
    parsed = parse_infer(_http_body(MAX_CLASSIFICATION), None, "m", "")
    count = parsed.request.classification["y"]
    assert count == MAX_CLASSIFICATION
    forwarded = grpcclient.InferRequestedOutput("y", class_count=count)  # what --backend triton builds
    assert forwarded._get_tensor().parameters["classification"].int64_param == count


@pytest.mark.parametrize("count", [2**63, 2**64 - 1])
def test_a_grpc_uint64_classification_count_past_int64_is_refused_as_over_http(count: int) -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.outputs.add(name="y").parameters["classification"].uint64_param = count
    with pytest.raises(BadRequest, match=r"output 'y': classification must be a non-negative integer"):
        requested_outputs(request)


def test_a_grpc_classification_count_within_int64_is_kept() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.outputs.add(name="y").parameters["classification"].uint64_param = 3
    request.outputs.add(name="z").parameters["classification"].int64_param = MAX_CLASSIFICATION
    assert requested_outputs(request) == (["y", "z"], {"y": 3, "z": MAX_CLASSIFICATION})


def test_a_gateway_answers_a_classification_count_past_int64_with_a_400(tmp_path) -> None:
    from onnx import TensorProto, helper

    from tests.repo_fixtures import repository_client, write_onnx_entry

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "scores",
        [value("x", TensorProto.FLOAT, ["batch", 3])],
        [value("y", TensorProto.FLOAT, ["batch", 3])],
    )
    config = """name: "scores"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""
    with repository_client(write_onnx_entry(tmp_path, graph, config)) as client:
        refused = client.post("/v2/models/scores/infer", content=_http_body(2**70))
        answered = client.post("/v2/models/scores/infer", content=_http_body(2))
    assert refused.status_code == 400, refused.text
    assert "classification" in refused.json()["error"]
    assert answered.status_code == 200, answered.text
    assert answered.json()["outputs"][0]["data"] == ["3.000000:1", "2.000000:2"]
    assert answered.json()["outputs"][0]["shape"] == [1, 2]
