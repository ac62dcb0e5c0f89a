"""Triton's sequence parameters sent to a model without a sequence batcher (every model Kiln exports):
Triton 2.51 ignores well-formed ones and refuses a mistyped one (HTTP and gRPC alike); the gateway
took any value without a word, so ``"sequence_end": "true"`` or a float id passed unnoticed."""

from __future__ import annotations

import json

import pytest
from tritonclient.grpc import service_pb2

from serving.errors import BadRequest
from serving.protocol.grpc_codec import request_parameters
from serving.protocol.v2_codec import parse_infer

Param = service_pb2.InferParameter


def http_body(**parameters) -> bytes:
    tensor = {"name": "images", "datatype": "UINT8", "shape": [1, 2], "data": [0, 0]}
    return json.dumps({"inputs": [tensor], "parameters": parameters}).encode()


def grpc_parameters(**parameters: Param):
    request = service_pb2.ModelInferRequest()
    for key, value in parameters.items():
        request.parameters[key].CopyFrom(value)
    return request.parameters


@pytest.mark.parametrize(
    "parameters",
    [
        {"sequence_id": 5, "sequence_start": True, "sequence_end": False},
        {"sequence_id": "session-a", "sequence_end": True},
        {"sequence_id": 0, "sequence_start": False},
        {"sequence_id": (1 << 64) - 1},
    ],
)
def test_well_formed_sequence_parameters_are_accepted_and_kept_from_the_model(parameters) -> None:
    parsed = parse_infer(http_body(**parameters), None, "lenet", "")
    assert parsed.request.parameters == {}


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"sequence_id": 1.5}, "'sequence_id'"),
        ({"sequence_id": True}, "'sequence_id'"),
        ({"sequence_id": -3}, "'sequence_id' must be a string or an integer from 0"),
        ({"sequence_start": "yes"}, "'sequence_start' must be true or false"),
        ({"sequence_end": 1}, "'sequence_end' must be true or false"),
        ({"sequence_end": "true"}, "'sequence_end'"),
    ],
)
def test_a_mistyped_sequence_parameter_over_http_is_a_400_naming_it(parameters, named) -> None:
    with pytest.raises(BadRequest, match=named):
        parse_infer(http_body(**parameters), None, "lenet", "")


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"sequence_id": Param(double_param=1.5)}, "'sequence_id'"),
        ({"sequence_id": Param(bool_param=True)}, "'sequence_id'"),
        ({"sequence_start": Param(int64_param=1)}, "'sequence_start' must be true or false"),
        ({"sequence_end": Param(string_param="yes")}, "'sequence_end' must be true or false"),
    ],
)
def test_a_mistyped_sequence_parameter_over_grpc_is_refused_as_triton_refuses_it(parameters, named) -> None:
    with pytest.raises(BadRequest, match=named):
        request_parameters(grpc_parameters(**parameters))


def test_well_formed_sequence_parameters_over_grpc_pass_a_negative_int64_id_included() -> None:
    """Triton's gRPC endpoint takes an int64 id below 0 (its HTTP one refuses it)."""
    given = grpc_parameters(
        sequence_id=Param(int64_param=-3),
        sequence_start=Param(bool_param=True),
        sequence_end=Param(bool_param=False),
    )
    assert request_parameters(given)["sequence_id"] == -3
    assert request_parameters(grpc_parameters(sequence_id=Param(string_param="a")))["sequence_id"] == "a"
