"""A Triton user's own config.pbtxt that lists the inputs but no output block (Triton's onnxruntime
backend completes the outputs from the graph): the gateway does not complete configs, so the model
fails its load saying so and naming the graph's outputs. It was ready, then every request was a 500
with a traceback (``zip() argument 2 is longer than argument 1``)."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

from tests.repo_fixtures import repository_client, write_onnx_entry

INPUTS = 'platform: "onnxruntime_onnx"\nmax_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
BODY = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


def _two_outputs(root: Path, config: str) -> Path:
    """``neg = -x`` and ``same = x`` over ``[batch, 3]``, ``config`` as its config.pbtxt."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["neg"]), helper.make_node("Identity", ["x"], ["same"])],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("neg", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("same", TensorProto.FLOAT, ["batch", 3]),
        ],
    )
    return write_onnx_entry(root, graph, config)


def test_a_config_listing_no_output_fails_its_load_naming_the_file_and_the_graphs_outputs(
    tmp_path: Path,
) -> None:
    with repository_client(_two_outputs(tmp_path, INPUTS)) as client:
        (entry,) = client.post("/v2/repository/index", json={}).json()
        answer = client.post("/v2/models/two/infer", json=BODY)
    assert entry["state"] == "UNAVAILABLE"
    assert str(tmp_path / "two" / "config.pbtxt") in entry["reason"]
    assert "lists no output: the gateway does not complete a config" in entry["reason"]
    assert "['neg', 'same']" in entry["reason"]
    assert answer.status_code != 500 and "lists no output" in answer.text


def test_a_config_listing_one_of_two_outputs_serves_that_one(tmp_path: Path) -> None:
    config = INPUTS + 'output [ { name: "neg" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
    with repository_client(_two_outputs(tmp_path, config)) as client:
        answer = client.post("/v2/models/two/infer", json=BODY)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert (output["name"], output["data"]) == ("neg", [-1.0, -2.0, -3.0])
