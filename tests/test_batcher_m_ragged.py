"""Triton's ragged batching (an input's ``allow_ragged_batch``, ``batch_input``, ``batch_output``) is
not honoured by the embedded backend's batcher, which merges only requests of one shape: a hand-written
config that asks for it is named at load, as the other fields Triton honours and it does not, instead
of serving without a word while requests of different lengths never batch; a graph made for it
(an input without its batch axis, an input a ``batch_input`` feeds) fails its load saying so."""

from __future__ import annotations

import logging
from pathlib import Path

from onnx import TensorProto, helper

from tests.repo_fixtures import repository_client, write_onnx_entry

CONFIG = """name: "ragged"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] {ragged} }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
{extra}dynamic_batching {{ }}
"""


def _entry(root: Path, ragged: str = "", extra: str = "") -> Path:
    """``y = x + x`` over ``[batch, n]``."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "ragged",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    return write_onnx_entry(root, graph, CONFIG.format(ragged=ragged, extra=extra))


def _warnings(root: Path, caplog) -> list[str]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
    logged = caplog.at_level(logging.WARNING, logger="serving.execution.loaded_model")
    with logged, repository_client(root) as client:
        answer = client.post("/v2/models/ragged/infer", json=body)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [2.0, 4.0]
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_input_allowing_ragged_batches_is_named_at_load(tmp_path: Path, caplog) -> None:
    (warning,) = _warnings(_entry(tmp_path, ragged="allow_ragged_batch: true"), caplog)
    assert "model ragged" in warning and "input allow_ragged_batch ['x']" in warning


def test_batch_inputs_and_outputs_are_named_at_load(tmp_path: Path, caplog) -> None:
    extra = (
        'batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "offsets" '
        'data_type: TYPE_FP32 source_input: "x" } ]\n'
        'batch_output [ { target_name: "y" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "x" } ]\n'
    )
    (warning,) = _warnings(_entry(tmp_path, extra=extra), caplog)
    assert "batch_input ['offsets']" in warning and "batch_output ['y']" in warning


def test_a_plain_config_is_not_warned_about(tmp_path: Path, caplog) -> None:
    assert _warnings(_entry(tmp_path), caplog) == []


def test_a_graph_made_for_ragged_batches_fails_its_load_saying_ragged_batching_is_why(tmp_path: Path) -> None:
    """Triton feeds a ragged input's requests concatenated, without a batch axis: a graph made for that
    takes ``[n]`` where the config says ``[-1, -1]``, and its load error says so."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "ragged",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    root = write_onnx_entry(tmp_path, graph, CONFIG.format(ragged="allow_ragged_batch: true", extra=""))
    with repository_client(root) as client:
        index = client.post("/v2/repository/index", json={}).json()
    (entry,) = index
    assert entry["state"] == "UNAVAILABLE"
    assert "input 'x' is [-1, -1] in the config" in entry["reason"]
    assert "allow_ragged_batch: requests are never concatenated here" in entry["reason"]
    assert entry["reason"].count("allow_ragged_batch") == 1  # the output, which has no such field, not


def test_a_graph_input_the_config_makes_a_batch_input_fails_its_load_naming_batch_input(
    tmp_path: Path,
) -> None:
    """Triton feeds a ``batch_input`` to the graph input it targets and loads such a model; here its
    load fails saying the backend does not make it, not that Triton refuses the model too."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offsets"], ["y"])],
        "ragged",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("offsets", TensorProto.FLOAT, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    extra = (
        'batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "offsets" '
        'data_type: TYPE_FP32 source_input: "x" } ]\n'
    )
    root = write_onnx_entry(tmp_path, graph, CONFIG.format(ragged="", extra=extra))
    with repository_client(root) as client:
        (entry,) = client.post("/v2/repository/index", json={}).json()
    assert entry["state"] == "UNAVAILABLE"
    assert "the graph's inputs ['offsets'] are the config's batch_input" in entry["reason"]
    assert "Triton refuses it too" not in entry["reason"]
