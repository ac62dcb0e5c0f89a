"""A gateway that is not ready because models failed to load says which, and why, in its readiness
answer: with 100 models and one broken it said only "server is not ready", and an operator went through
the log or the repository index to find which."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

from serving.protocol.health import SHOWN_FAILURES
from tests.repo_fixtures import repository_client, write_entry_without_model, write_onnx_entry


def _config(name: str) -> str:
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
    )


def _good(root: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "good",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    write_onnx_entry(root, graph, _config("good"))


def test_not_ready_names_the_model_that_failed_and_why(tmp_path: Path) -> None:
    _good(tmp_path)
    write_entry_without_model(tmp_path, "broken", _config("broken"))
    with repository_client(tmp_path) as client:
        answer = client.get("/v2/health/ready")
        assert client.get("/v2/models/good/ready").status_code == 200  # the others serve
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error.startswith("server is not ready: model 'broken' failed to load: "), error
    assert "good" not in error and "more" not in error


def test_many_failures_name_the_first_few_and_count_the_rest(tmp_path: Path) -> None:
    names = [f"broken{i}" for i in range(SHOWN_FAILURES + 2)]
    for name in names:
        write_entry_without_model(tmp_path, name, _config(name))
    with repository_client(tmp_path) as client:
        error = client.get("/v2/health/ready").json()["error"]
    assert error.count("failed to load") == SHOWN_FAILURES
    assert error.endswith("; and 2 more (POST /v2/repository/index)"), error


def test_a_ready_gateway_answers_200_with_no_body(tmp_path: Path) -> None:
    _good(tmp_path)
    with repository_client(tmp_path) as client:
        answer = client.get("/v2/health/ready")
    assert answer.status_code == 200 and answer.content == b""
