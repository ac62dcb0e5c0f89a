"""A gRPC ``sequence_id`` in a ``uint64_param``: Triton 2.51 refuses it (INVALID_ARGUMENT, "expected
int64_param or string_param"), whatever its value; Kiln took it, where the HTTP twin is refused only
below 0. tritonclient and perf_analyzer write an int64_param, which stays accepted."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2

from serving.errors import BadRequest
from serving.protocol.grpc_codec import request_parameters

Param = service_pb2.InferParameter


def _parameters(**given: Param):
    request = service_pb2.ModelInferRequest()
    for key, value in given.items():
        request.parameters[key].CopyFrom(value)
    return request.parameters


@pytest.mark.parametrize("ident", [5, (1 << 64) - 1])
def test_a_uint64_sequence_id_over_grpc_is_refused_as_triton_refuses_it(ident: int) -> None:
    with pytest.raises(BadRequest, match="'sequence_id' must be an int64_param or a string_param"):
        request_parameters(_parameters(sequence_id=Param(uint64_param=ident)))


def test_an_int64_sequence_id_and_a_uint64_model_parameter_stay_accepted() -> None:
    given = _parameters(sequence_id=Param(int64_param=5), beam_size=Param(uint64_param=4))
    assert request_parameters(given) == {"sequence_id": 5, "beam_size": 4}
