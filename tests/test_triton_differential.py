"""Where the gateway answered a tritonclient user differently from the real Triton 2.51 (found by
running one battery against both on the same repository), it now answers as Triton does: each case
here is the gateway alone, held to what Triton was seen to answer."""

from __future__ import annotations

import json
import queue

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.errors import BadRequest
from serving.protocol.tensors import from_json_data
from tests.repo_fixtures import (
    CHANNELS,
    SIZE,
    classifier_gateway,
)

MODEL = "lenet"
IMAGE = [1, SIZE, SIZE, CHANNELS]
INFER = f"/v2/models/{MODEL}/infer"
Param = service_pb2.InferParameter


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with classifier_gateway(tmp_path_factory.mktemp("differential")) as live:
        yield live


@pytest.fixture(scope="module")
def stub(gateway):
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def body(**extra) -> dict:
    pixels = [0] * int(np.prod(IMAGE))
    return {"inputs": [{"name": "images", "datatype": "UINT8", "shape": IMAGE, "data": pixels}], **extra}


def post(gateway, json: dict) -> httpx.Response:
    return httpx.post(f"http://{gateway.url}{INFER}", json=json, timeout=30)


def grpc_request(model: str = MODEL, request_id: str = "", datatype: str = "UINT8", **parameters):
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="images", datatype=datatype, shape=IMAGE)
    dtype = np.float32 if datatype == "FP32" else np.uint8
    request.raw_input_contents.append(np.zeros(IMAGE, dtype).tobytes())
    for key, value in parameters.items():
        request.parameters[key].CopyFrom(value)
    return request


def with_outputs(request, *outputs: tuple[str, dict]):
    for name, parameters in outputs:
        output = request.outputs.add(name=name)
        for key, value in parameters.items():
            output.parameters[key].CopyFrom(value)
    return request


def test_a_failed_request_on_a_stream_is_answered_with_its_id(stub) -> None:
    """Triton echoes a failed stream request's ``id`` in ``infer_response``; the gateway left it empty,
    so a client with several requests in flight (answered as they finish) could not tell which failed."""
    requests = [
        grpc_request(request_id="fine"),
        grpc_request(request_id="wrong-datatype", datatype="FP32"),
        grpc_request(model="nope", request_id="unknown-model"),
        grpc_request(request_id="bad-timeout", timeout=Param(string_param="soon")),
    ]
    answers = {}
    for reply in stub.ModelStreamInfer(iter(requests), timeout=30):
        answers[reply.infer_response.id] = reply.error_message
    assert set(answers) == {"fine", "wrong-datatype", "unknown-model", "bad-timeout"}
    assert answers["fine"] == ""
    assert "datatype" in answers["wrong-datatype"]
    assert "unknown model" in answers["unknown-model"]
    assert "timeout" in answers["bad-timeout"]


def test_statistics_over_http_carry_every_field_triton_writes(gateway) -> None:
    """Triton's HTTP statistics list ``response_stats`` and ``memory_usage`` for every model (empty for
    a model that is not decoupled); the gateway's lacked them, a KeyError for a client reading them."""
    assert post(gateway, body()).status_code == 200
    for path in (f"/v2/models/{MODEL}/stats", "/v2/models/stats"):
        stats = httpx.get(f"http://{gateway.url}{path}", timeout=30).json()["model_stats"]
        assert stats and all(s["response_stats"] == {} and s["memory_usage"] == [] for s in stats), path
    over_grpc = grpcclient.InferenceServerClient(gateway.grpc_url).get_inference_statistics(MODEL)
    assert over_grpc.model_stats[0].inference_stats.success.count >= 1


def test_an_output_listed_twice_alike_is_answered_once_as_triton_does(gateway, stub) -> None:
    both = [{"name": "probabilities"}, {"name": "logits"}, {"name": "probabilities"}]
    answer = post(gateway, body(outputs=both))
    assert answer.status_code == 200, answer.text
    assert [o["name"] for o in answer.json()["outputs"]] == ["probabilities", "logits"]

    request = with_outputs(grpc_request(), ("logits", {}), ("logits", {}))
    reply = stub.ModelInfer(request, timeout=30)
    assert [o.name for o in reply.outputs] == ["logits"] and len(reply.raw_output_contents) == 1


def test_an_output_listed_twice_asking_different_things_is_refused(gateway, stub) -> None:
    """Triton's HTTP endpoint keeps the first entry and its gRPC one the classification: no answer is
    Triton's, so the gateway names the conflict instead of picking one."""
    differently = [{"name": "logits"}, {"name": "logits", "parameters": {"classification": 2}}]
    answer = post(gateway, body(outputs=differently))
    assert answer.status_code == 400 and "twice with different parameters" in answer.json()["error"]

    request = with_outputs(
        grpc_request(), ("logits", {}), ("logits", {"classification": Param(int64_param=2)})
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "twice with different parameters" in refused.value.details()


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, None], ids=["list", "object", "null"])
def test_a_request_parameter_that_is_no_scalar_is_a_400(gateway, value) -> None:
    """Triton answers such a parameter 400; the gateway ran the request (and through ``--backend
    triton``, where tritonclient cannot forward it, answered a 500)."""
    answer = post(gateway, body(parameters={"custom": value}))
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("parameter 'custom' must be a string, a number or a boolean")


def test_scalar_request_parameters_still_reach_the_model(gateway) -> None:
    parameters = {"text": "x", "count": 3, "ratio": 1.5, "flag": True, "priority": 0, "big": (1 << 64) - 1}
    assert post(gateway, body(parameters=parameters)).status_code == 200


@pytest.mark.parametrize("value", [1 << 64, -(1 << 63) - 1], ids=["past uint64", "below int64"])
def test_an_integer_parameter_past_64_bits_is_a_400_not_a_500_through_triton(gateway, value) -> None:
    answer = post(gateway, body(parameters={"custom": value}))
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("parameter 'custom' is past 64 bits")


@pytest.mark.parametrize("priority", [-1, "1", 1.5, True])
def test_a_priority_triton_refuses_is_refused_over_http(gateway, priority) -> None:
    answer = post(gateway, body(parameters={"priority": priority}))
    assert answer.status_code == 400 and "'priority'" in answer.json()["error"]


def test_a_priority_is_read_over_grpc_as_triton_reads_it(stub) -> None:
    for fine in (Param(uint64_param=3), Param(int64_param=2)):
        assert stub.ModelInfer(grpc_request(priority=fine), timeout=30).outputs
    for refused in (Param(int64_param=-1), Param(string_param="1"), Param(bool_param=True)):
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(grpc_request(priority=refused), timeout=30)
        assert (
            error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'priority'" in error.value.details()
        )


def test_json_booleans_are_refused_in_a_numeric_tensor(gateway) -> None:
    """Triton refuses ``true`` in a UINT8 tensor; the gateway ran it as 1."""
    flags = body()
    flags["inputs"][0]["data"] = [True] * int(np.prod(IMAGE))
    answer = post(gateway, flags)
    assert answer.status_code == 400 and "must be numbers" in answer.json()["error"]
    with pytest.raises(BadRequest, match="must be numbers"):
        from_json_data([1.0, False], "FP32", [2], tensor="x")
    assert from_json_data([True, 0], "BOOL", [2], tensor="x").tolist() == [True, False]


def test_a_stream_through_tritonclient_reports_a_failed_request_and_goes_on(gateway) -> None:
    """tritonclient's stream callback: the failed request's error, then the next request answered."""
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    try:
        wrong = grpcclient.InferInput("images", IMAGE, "FP32")
        wrong.set_data_from_numpy(np.zeros(IMAGE, np.float32))
        client.async_stream_infer(MODEL, [wrong], request_id="a")
        _, error = answers.get(timeout=30)
        assert error is not None and "datatype" in error.message()
        right = grpcclient.InferInput("images", IMAGE, "UINT8")
        right.set_data_from_numpy(np.zeros(IMAGE, np.uint8))
        client.async_stream_infer(MODEL, [right], request_id="b")
        result, error = answers.get(timeout=30)
        assert error is None and result.get_response().id == "b"
    finally:
        client.stop_stream()
        client.close()


def test_a_parameter_tritonclient_cannot_forward_is_the_clients_400_through_the_triton_backend() -> None:
    from serving.errors import BadRequest
    from serving.execution.triton import _forwardable

    fits = {"beam_size": 4, "big": (1 << 63) - 1, "flag": True, "text": "x"}
    assert _forwardable(fits) == fits
    with pytest.raises(BadRequest, match="parameter 'big' is past int64"):
        _forwardable({"big": 1 << 63})


@pytest.mark.parametrize(
    "extra",
    [{"id": "\ud800"}, {"parameters": {"custom": "\ud800"}}, {"parameters": {"\ud800": 1}}],
    ids=["id", "parameter value", "parameter name"],
)
def test_a_lone_surrogate_in_the_id_or_a_parameter_is_a_400_not_a_500_through_tritons_client(gateway, extra):
    raw = json.dumps(body(**extra))  # ASCII, the surrogate escaped: "\\ud800"
    answer = httpx.post(f"http://{gateway.url}{INFER}", content=raw, timeout=30)
    assert answer.status_code == 400 and "lone surrogate" in answer.json()["error"]
