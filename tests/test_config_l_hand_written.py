"""Hand-written config.pbtxt files a Triton user brings: what Triton refuses fails that model's load
naming the file and the field (the rest of the repository is served), what it accepts in odd but valid
text syntax serves, and what the embedded backend does not honour is named at load."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from serving.execution.repository import Repository
from tests.repo_fixtures import repository_client, write_onnx_entry

CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "a" data_type: TYPE_INT64 dims: [ 3 ] }}, {{ name: "b" data_type: TYPE_FP32 dims: [ 3 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }} ]
"""

STEPS = (
    'ensemble_scheduling { step [ { model_name: "intact" model_version: -1 '
    'input_map { key: "a" value: "a" } output_map { key: "y" value: "y" } } ] }\n'
)

A_B = {"a": [[1, 2, 3]], "b": [[0.5, 0.5, 0.5]]}


def _entry(root: Path, name: str, config: str) -> Path:
    """``y = float(a) + b`` over ``[batch, 3]`` (``a`` int64, ``b`` float), ``config`` its config.pbtxt."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["a"], ["af"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["af", "b"], ["y"]),
        ],
        name,
        [
            helper.make_tensor_value_info("a", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    return write_onnx_entry(root, graph, config)


def _body(values: dict[str, list]) -> dict:
    types = {"a": "INT64", "b": "FP32"}
    return {
        "inputs": [
            {"name": name, "shape": [1, 3], "datatype": types[name], "data": value[0]}
            for name, value in values.items()
        ]
    }


def test_ensemble_steps_on_an_onnx_model_fail_its_load_naming_the_field_and_the_rest_is_served(
    tmp_path: Path,
) -> None:
    _entry(tmp_path, "stepped", CONFIG.format(name="stepped") + STEPS)
    _entry(tmp_path, "intact", CONFIG.format(name="intact"))
    repository = Repository(tmp_path)
    assert list(repository.entries) == ["intact"]
    error = repository.errors["stepped"]
    assert "ensemble_scheduling cannot be set" in error
    assert str(tmp_path / "stepped" / "config.pbtxt") in error
    with repository_client(tmp_path) as client:
        refused = client.post("/v2/models/stepped/infer", json=_body(A_B))
        assert refused.status_code == 404 and "ensemble_scheduling" in refused.json()["error"]
        served = client.post("/v2/models/intact/infer", json=_body(A_B))
        assert served.status_code == 200 and served.json()["outputs"][0]["data"] == [1.5, 2.5, 3.5]


def test_an_ensemble_platform_without_steps_fails_its_load_naming_the_field(tmp_path: Path) -> None:
    config = CONFIG.format(name="hollow").replace('"onnxruntime_onnx"', '"ensemble"')
    (tmp_path / "hollow").mkdir()
    (tmp_path / "hollow" / "config.pbtxt").write_text(config)
    repository = Repository(tmp_path)
    assert "platform 'ensemble' must have an ensemble_scheduling block" in repository.errors["hollow"]


# odd but valid protobuf text: Triton's parser (protobuf's) reads each of these as the plain CONFIG
ODD_SYNTAX = {
    "comments": ("max_batch_size: 8", "# hand written\nmax_batch_size: 8  # eight at most"),
    "single quotes": ('name: "{name}"', "name: '{name}'"),
    "field separators": ("max_batch_size: 8", "max_batch_size: 8;"),
    "commas in a block": (
        'name: "a" data_type: TYPE_INT64 dims: [ 3 ]',
        'name: "a", data_type: TYPE_INT64, dims: 3,',
    ),
    "repeated blocks": (
        'input [ {{ name: "a" data_type: TYPE_INT64 dims: [ 3 ] }}, {{ name: "b" data_type: TYPE_FP32 dims: [ 3 ] }} ]',
        'input {{ name: "a" data_type: TYPE_INT64 dims: 3 }}\ninput: {{ name: "b" data_type: TYPE_FP32 dims: [ 3 ] }}',
    ),
    "angle brackets": (
        'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }} ]',
        'output < name: "y" data_type: TYPE_FP32 dims: [ 3 ] >',
    ),
}


@pytest.mark.parametrize("syntax", sorted(ODD_SYNTAX))
def test_odd_but_valid_text_syntax_is_served_as_the_plain_config(tmp_path: Path, syntax: str) -> None:
    old, new = ODD_SYNTAX[syntax]
    assert old in CONFIG
    _entry(tmp_path, "odd", CONFIG.replace(old, new).format(name="odd"))
    with repository_client(tmp_path) as client:
        answer = client.post("/v2/models/odd/infer", json=_body(A_B))
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [1.5, 2.5, 3.5]


def test_an_input_declared_optional_is_named_at_load_as_one_every_request_must_send(
    tmp_path: Path, caplog
) -> None:
    optional = CONFIG.format(name="partial").replace(
        'name: "b" data_type: TYPE_FP32 dims: [ 3 ]',
        'name: "b" data_type: TYPE_FP32 dims: [ 3 ] optional: true',
    )
    _entry(tmp_path, "partial", optional)
    logged = caplog.at_level(logging.WARNING, logger="serving.execution.loaded_model")
    with logged, repository_client(tmp_path) as client:
        left_out = client.post("/v2/models/partial/infer", json=_body({"a": A_B["a"]}))
        sent = client.post("/v2/models/partial/infer", json=_body(A_B))
    assert left_out.status_code == 400 and "missing ['b']" in left_out.json()["error"]
    assert sent.status_code == 200
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "model partial" in warning and "input optional ['b']" in warning
