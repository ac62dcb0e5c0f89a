"""Repositories written for Triton, not by Kiln's export: a config.pbtxt is completed as Triton completes
it before anyone reads it (an ONNX model's platform, backend and model file name), shown with what
Triton fills in, and the layout flags Triton refuses fail that model's load naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

from serving.execution.loaded_model import unhonoured_fields
from serving.execution.repository import Repository, RepositoryEntry
from tests.repo_fixtures import repository_client, write_onnx_entry

TENSORS = """max_batch_size: 4
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 3 ]{flag} }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }} ]
"""


def _negate(root: Path, head: str, flag: str = "") -> Path:
    """``y = -x`` over ``[batch, 3]``, its config ``head`` and then its tensors (``flag`` on ``x``)."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "negate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    return write_onnx_entry(root, graph, head + TENSORS.format(flag=flag))


BODY = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


@pytest.mark.parametrize("head", ['backend: "onnxruntime"\n', ""], ids=["backend only", "neither"])
def test_a_config_without_a_platform_is_served_and_shown_as_triton_completes_it(
    tmp_path: Path, head: str
) -> None:
    with repository_client(_negate(tmp_path, head)) as client:
        metadata = client.get("/v2/models/negate").json()
        config = client.get("/v2/models/negate/config").json()
        answer = client.post("/v2/models/negate/infer", json=BODY)
    assert metadata["platform"] == "onnxruntime_onnx"  # Triton's platform for the onnxruntime backend
    assert (config["platform"], config["backend"]) == ("onnxruntime_onnx", "onnxruntime")
    assert config["default_model_filename"] == "model.onnx"
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [-1.0, -2.0, -3.0]


def test_the_config_shows_the_defaults_triton_fills_in(tmp_path: Path) -> None:
    head = 'platform: "onnxruntime_onnx"\ndynamic_batching { }\n'
    with repository_client(_negate(tmp_path, head)) as client:
        config = client.get("/v2/models/negate/config").json()
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]  # its max_batch_size
    assert config["optimization"]["input_pinned_memory"] == {"enable": True}
    assert config["optimization"]["output_pinned_memory"] == {"enable": True}
    (group,) = config["instance_group"]  # the one Triton makes, of the one instance served here
    assert (group["name"], group["kind"], group["count"], group["gpus"]) == ("negate", "KIND_CPU", 1, [])


def test_what_a_config_gives_is_shown_as_it_gives_it() -> None:
    text = (
        'name: "m" platform: "onnxruntime_onnx" max_batch_size: 8 version_policy { all { } }\n'
        "dynamic_batching { preferred_batch_size: [2] } optimization { input_pinned_memory { enable: false } }"
    )
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    shown = RepositoryEntry(name="m", path=Path("m"), config=config).config_dict()
    assert shown["version_policy"] == {"all": {}}
    assert shown["dynamic_batching"]["preferred_batch_size"] == [2]
    assert shown["optimization"]["input_pinned_memory"] == {"enable": False}
    assert not config.optimization.HasField("output_pinned_memory")  # the loaded config is left alone


@pytest.mark.parametrize(
    ("head", "flag", "said"),
    [
        (
            'platform: "onnxruntime_onnx" backend: "tensorrt"\n',
            "",
            "platform 'onnxruntime_onnx' and backend 'tensorrt' do not go together",
        ),
        (
            'platform: "onnxruntime_onnx"\n',
            " format: FORMAT_NCHW",
            "has format FORMAT_NCHW, which requires 3 dims",
        ),
        ('platform: "onnxruntime_onnx"\n', " is_shape_tensor: true", "input 'x' sets is_shape_tensor"),
        ('platform: "onnxruntime_onnx"\n', " is_non_linear_format_io: true", "sets is_non_linear_format_io"),
    ],
    ids=["platform and backend", "nchw of one dim", "shape tensor", "non-linear format"],
)
def test_a_layout_or_backend_triton_refuses_fails_the_load_naming_the_field(
    tmp_path: Path, head: str, flag: str, said: str
) -> None:
    repository = Repository(_negate(tmp_path, head, flag))
    assert "negate" not in repository.entries
    error = repository.errors["negate"]
    assert said in error and str(tmp_path / "negate" / "config.pbtxt") in error


def test_an_nchw_input_of_three_dims_still_loads(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 2, 2])],
    )
    config = (
        'platform: "onnxruntime_onnx" max_batch_size: 2\n'
        'input [{ name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, 2, 2] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [3, 2, 2] }]\n'
    )
    assert not Repository(write_onnx_entry(tmp_path, graph, config)).errors


def test_a_decoupled_model_is_named_at_load_as_answered_over_unary_calls() -> None:
    text = 'name: "m" platform: "onnxruntime_onnx" model_transaction_policy { decoupled: true }'
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    (field,) = unhonoured_fields(config)
    assert field.startswith("model_transaction_policy decoupled")


def test_a_config_listing_no_input_is_refused_as_one_the_gateway_does_not_complete(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "bare",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    root = write_onnx_entry(tmp_path, graph, 'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n')
    with repository_client(root) as client:
        (entry,) = client.post("/v2/repository/index", json={}).json()
    assert entry["state"] == "UNAVAILABLE"
    assert "lists no input: the gateway does not complete a config" in entry["reason"]
    assert "['x']" in entry["reason"] and "Triton refuses it too" not in entry["reason"]  # Triton serves it
