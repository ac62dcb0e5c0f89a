"""A classification the output's type cannot give (FP16, BOOL, BYTES scores) is refused after the model
ran: Triton 2.51 refuses it as it fills the model's response, so on a ModelStreamInfer stream its error
answer is the model's, naming the model and the version as the request wrote them and marked
``triton_final_response``, where the gateway answered with the id alone, as for a request it refused
before the model took it (tests/test_grpc_stream_error_fields.py holds the other cases). Seen on the
wire against the real Triton 2.51 serving the same repository's python flavour."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests import test_grpc_stream_error_fields
from tests.repo_fixtures import running_triton, write_onnx_entry

# the gateway (Kiln's gRPC server, then grpcio's) over this file's ``repository``
gateway_grpc = test_grpc_stream_error_fields.gateway_grpc
MODEL = "halves"  # FP16 in, FP16 out: Triton's classification refuses FP16 scores
CONFIG = """name: "halves"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP16 dims: [ 3 ] }]
output [{ name: "y" data_type: TYPE_FP16 dims: [ 3 ] }]
"""
FINAL = "triton_final_response"

# (id, model_version, classification count) of each request on the stream, and the
# (id, model_name, model_version, failed, final) of its answer, as Triton 2.51 answers them
STREAM = [
    (("plain", "", 0), ("plain", MODEL, "1", False, True)),
    (("classified", "", 2), ("classified", MODEL, "", True, True)),
    (("classified-v1", "1", 2), ("classified-v1", MODEL, "1", True, True)),
    (("after", "", 0), ("after", MODEL, "1", False, True)),
]


def _halves() -> helper.GraphProto:
    return helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 3])],
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_onnx_entry(tmp_path_factory.mktemp("classification-stream"), _halves(), CONFIG)


def _request(request_id: str, version: str, count: int) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL, model_version=version, id=request_id)
    request.inputs.add(name="x", datatype="FP16", shape=[1, 3])
    request.raw_input_contents.append(np.array([[1.0, 3.0, 2.0]], np.float16).tobytes())
    if count:
        request.outputs.add(name="y").parameters["classification"].int64_param = count
    return request


def _answers(address: str) -> list[tuple[str, str, str, bool, bool]]:
    requests = [_request(*sent) for sent, _ in STREAM]
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        replies = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    return [
        (
            r.infer_response.id,
            r.infer_response.model_name,
            r.infer_response.model_version,
            bool(r.error_message),
            FINAL in r.infer_response.parameters and r.infer_response.parameters[FINAL].bool_param,
        )
        for r in replies
    ]


def test_a_classification_the_outputs_type_refuses_is_the_models_answer_on_a_stream(gateway_grpc) -> None:
    """The refused classification came back with the id alone and no final mark; now, as Triton's, it
    names the model and the version the request wrote, is final, and the stream goes on."""
    assert _answers(gateway_grpc) == [answer for _, answer in STREAM]


def test_a_classification_the_outputs_type_refuses_is_invalid_argument_in_a_unary_call(gateway_grpc) -> None:
    with grpc.insecure_channel(gateway_grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_request("unary", "", 1), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "class result not available for output due to unsupported type 'FP16'"


@pytest.mark.triton
def test_the_real_triton_answers_the_same_stream_with_the_same_fields(repository, tmp_path) -> None:
    """The table the gateway is held to is Triton's: the same stream on the same repository."""
    with running_triton(repository, tmp_path / "triton") as triton:
        assert _answers(triton.grpc_url) == [answer for _, answer in STREAM]
