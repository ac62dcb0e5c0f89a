"""A name a client sends (a model in the URL, an input, a datatype) comes back in an error cut short,
over HTTP as over gRPC: never echoed whole, escaped and grown, into a body or a stream's answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from onnx import TensorProto, helper

from tests.repo_fixtures import LiveServer, held_grpc_port, repository_client, write_onnx_entry

CONFIG = (
    'name: "ident"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
    'input { name: "x" data_type: TYPE_FP32 dims: 3 }\noutput { name: "y" data_type: TYPE_FP32 dims: 3 }\n'
)
BOUND = 4096  # the most a gRPC status message carries (serving.protocol.h2_wire.MESSAGE_BYTES)
ESCAPES = "\x1b" * 1_100_000  # 1.1 MB of ESC, each shown as the 4 characters \x1b: 4.4 MB escaped


def identity_repository(root: Path) -> Path:
    """A repository of one entry, ``ident``: y = x over FP32 [-1, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ident", [x], [y])
    root.mkdir()
    return write_onnx_entry(root, graph, CONFIG)


def tensor(name: str = "x", datatype: str = "FP32") -> dict:
    return {"name": name, "shape": [1, 3], "datatype": datatype, "data": [1.0, 2.0, 3.0]}


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator:
    with repository_client(identity_repository(tmp_path_factory.mktemp("pathsafe") / "repo")) as client:
        yield client


def test_a_long_model_name_in_the_url_is_a_404_that_names_its_start_only(client) -> None:
    answer = client.get("/v2/models/" + "a" * 60_000 + "/config")
    assert answer.status_code == 404
    assert len(answer.content) < 2 * BOUND
    assert answer.json()["error"].startswith("unknown model 'aaaa")
    assert answer.json()["error"].endswith("...")


@pytest.mark.parametrize(
    ("body", "start"),
    [
        (
            {"inputs": [tensor(ESCAPES)]},
            "model 'ident' expects inputs ['x']; missing ['x'], unexpected ['\\x1b",
        ),
        ({"inputs": [tensor(datatype=ESCAPES)]}, "tensor 'x': unsupported datatype '\\x1b"),
        ({"inputs": [tensor()], "outputs": [{"name": ESCAPES}]}, "model 'ident' has no output(s) ['\\x1b"),
    ],
    ids=["input name", "datatype", "output name"],
)
def test_a_megabyte_tensor_name_comes_back_cut_short_in_the_400(client, body: dict, start: str) -> None:
    answer = client.post("/v2/models/ident/infer", json=body)
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert message.startswith(start)
    assert len(answer.content) < 2 * BOUND  # was 4.4 MB of escapes, for a 1.1 MB name
    assert "\x1b" not in message


def test_a_stream_answers_a_megabyte_input_name_with_a_short_error_and_goes_on(tmp_path: Path) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from serving.app import create_app
    from serving.settings import Settings

    def request(name: str, request_id: str) -> service_pb2.ModelInferRequest:
        infer = service_pb2.ModelInferRequest(model_name="ident", id=request_id)
        tensor = infer.inputs.add(name=name, datatype="FP32", shape=[1, 3])
        tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
        return infer

    repository = identity_repository(tmp_path / "repo")
    with held_grpc_port() as port:
        settings = Settings(model_repository=repository, grpc_port=port, reuse_port=True)
        with LiveServer(create_app(settings)), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)  # the client's default 4 MiB limit
            answers = list(
                stub.ModelStreamInfer(iter([request(ESCAPES, "bad"), request("x", "good")]), timeout=60)
            )
    assert [a.infer_response.id for a in answers] == ["bad", "good"]
    refused, served = answers
    assert refused.error_message.startswith("model 'ident' expects inputs ['x']; missing ['x'], unexpected")
    assert len(refused.error_message.encode()) <= BOUND  # was 4.4 MB: past the limit, the stream ended
    assert not served.error_message and served.infer_response.outputs[0].name == "y"
