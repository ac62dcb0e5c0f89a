"""Hand-edited config.pbtxt files are read as Triton reads them: an edit Triton refuses to load fails
that model's load naming the file and the field (the other models still load), a version policy picks
the versions Triton picks, and a field Triton honours that the embedded backend does not is named at
load instead of being ignored without a word."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository, version_problem
from tests.repo_fixtures import write_onnx_entry

CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }}]
dynamic_batching {{ }}
"""


def _entry(root: Path, name: str, config: str, versions: tuple[str, ...] = ("1",)) -> None:
    """A config-only entry (the repository reads no model file) with version directories holding a file."""
    (root / name).mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    for version in versions:
        (root / name / version).mkdir()
        (root / name / version / "model.onnx").write_bytes(b"")


# (the edit, old -> new, and what the load error must say), each one Triton 2.51 refuses to load
REFUSED = {
    "a zero dimension": (
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 3 ]',
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 0 ]',
        "output 'y' dims [0]",
    ),
    "a dimension below -1": ("dims: [ 3 ] }]\noutput", "dims: [ -2 ] }]\noutput", "input 'x' dims [-2]"),
    "no data_type": ('name: "y" data_type: TYPE_FP32', 'name: "y"', "output 'y' must specify data_type"),
    "no dims": (
        'name: "y" data_type: TYPE_FP32 dims: [ 3 ]',
        'name: "y" data_type: TYPE_FP32',
        "output 'y' must specify dims",
    ),
    "a reshape of another size": (
        "dims: [ 3 ] }]\noutput",
        "dims: [ 3 ] reshape { shape: [ 2, 2 ] } }]\noutput",
        "input 'x': dims [3] and reshape [2, 2]",
    ),
    "a negative max_batch_size": (
        "max_batch_size: 8",
        "max_batch_size: -1",
        "max_batch_size must be 0 or more",
    ),
    "a preferred size past max_batch_size": (
        "dynamic_batching { }",
        "dynamic_batching { preferred_batch_size: [ 4, 16 ] }",
        "preferred_batch_size 16 must be in [1, max_batch_size 8]",
    ),
    "a preferred size of 0": (
        "dynamic_batching { }",
        "dynamic_batching { preferred_batch_size: [ 0 ] }",
        "preferred_batch_size 0",
    ),
    "a default priority past the levels": (
        "dynamic_batching { }",
        "dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
        "default_priority_level 3 must be in [1, priority_levels 2]",
    ),
    "a queue policy for a level that is not one": (
        "dynamic_batching { }",
        "dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 5 value { max_queue_size: 1 } } }",
        "priority_queue_policy level 5",
    ),
    "preserve_ordering with priorities": (
        "dynamic_batching { }",
        "dynamic_batching { preserve_ordering: true priority_levels: 2 default_priority_level: 1 }",
        "preserve_ordering allows one priority level",
    ),
    "preserve_ordering with DELAY": (
        "dynamic_batching { }",
        "dynamic_batching { preserve_ordering: true default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1000 } }",
        "forbids a queue policy's timeout_action DELAY",
    ),
}


@pytest.mark.parametrize("edit", sorted(REFUSED))
def test_an_edit_triton_refuses_fails_that_models_load_naming_file_and_field_and_the_others_load(
    tmp_path: Path, edit: str
) -> None:
    old, new, said = REFUSED[edit]
    config = CONFIG.format(name="edited")
    assert old in config
    _entry(tmp_path, "edited", config.replace(old, new))
    _entry(tmp_path, "intact", CONFIG.format(name="intact"))
    repository = Repository(tmp_path)
    assert list(repository.entries) == ["intact"]
    error = repository.errors["edited"]
    assert said in error and str(tmp_path / "edited" / "config.pbtxt") in error


def test_an_empty_reshape_is_refused_only_without_a_batch_axis(tmp_path: Path) -> None:
    scalar = 'output [{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } }]'
    config = CONFIG.format(name="batched").replace(
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }]', scalar
    )
    _entry(tmp_path, "batched", config)  # export's per-row scalar: valid
    _entry(
        tmp_path,
        "alone",
        config.replace('"batched"', '"alone"').replace("max_batch_size: 8", "max_batch_size: 0"),
    )
    repository = Repository(tmp_path)
    assert list(repository.entries) == ["batched"]
    assert "output 'y' cannot have an empty reshape" in repository.errors["alone"]


def test_a_variable_size_reshape_keeps_the_counts_between_its_variable_dimensions(tmp_path: Path) -> None:
    base = CONFIG.format(name="{name}").replace(
        "dims: [ 3 ] }]\noutput", "dims: [ 2, 4, -1, 6 ] reshape { shape: [ %s ] } }]\noutput"
    )
    _entry(tmp_path, "kept", base.replace("{name}", "kept") % "8, -1, 1, 6")
    _entry(tmp_path, "changed", base.replace("{name}", "changed") % "8, -1, 2, 6")
    repository = Repository(tmp_path)
    assert list(repository.entries) == ["kept"]
    assert "dims [2, 4, -1, 6] and reshape [8, -1, 2, 6]" in repository.errors["changed"]


def test_latest_with_no_versions_serves_none_as_triton_does_and_says_why(tmp_path: Path) -> None:
    policy = "version_policy { latest { num_versions: 0 } }\n"
    _entry(tmp_path, "none", policy + CONFIG.format(name="none"), versions=("1", "2"))
    _entry(tmp_path, "two", policy.replace("0", "2") + CONFIG.format(name="two"), versions=("1", "2", "3"))
    repository = Repository(tmp_path)
    assert repository.get("none").versions == []
    assert "version_policy latest num_versions 0" in version_problem(repository.get("none"))
    assert repository.get("two").versions == ["2", "3"]


def test_specific_versions_with_no_directory_are_named_in_a_warning(tmp_path: Path, caplog) -> None:
    policy = "version_policy { specific { versions: [ 1, 3, 7 ] } }\n"
    _entry(tmp_path, "picked", policy + CONFIG.format(name="picked"), versions=("1", "2", "3"))
    with caplog.at_level(logging.WARNING, logger="serving.execution"):
        repository = Repository(tmp_path)
    assert repository.get("picked").versions == ["1", "3"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "model picked: version_policy specific names versions [7]" in warning


def _doubling(root: Path, extra: str) -> Path:
    """``y = 2 x`` over ``[batch, 3]``, its config ``CONFIG`` with ``extra`` appended."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "doubling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [two],
    )
    return write_onnx_entry(root, graph, CONFIG.format(name="doubling") + extra)


IGNORED = """dynamic_batching { priority_levels: 2 default_priority_level: 2 }
optimization { graph { level: -1 } execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "kiln_bucketing" value { string_value: "0" } }
"""


def test_fields_triton_honours_and_the_embedded_backend_does_not_are_named_at_load(
    tmp_path: Path, caplog
) -> None:
    root = _doubling(tmp_path, "")
    config = root / "doubling" / "config.pbtxt"
    config.write_text(config.read_text().replace("dynamic_batching { }\n", IGNORED))
    backend = OnnxRuntimeBackend(Repository(root), OrtOptions(lone_request_threads=0))

    async def body():
        await backend.start()
        try:
            return await backend.infer(InferRequest("doubling", {"x": np.ones((2, 3), np.float32)}))
        finally:
            await backend.stop()

    with caplog.at_level(logging.WARNING, logger="serving.execution.loaded_model"):
        answer = asyncio.run(body())
    assert answer.outputs["y"].tolist() == [[2.0] * 3] * 2  # still served
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for field in (
        "optimization.graph.level -1",
        "cpu_execution_accelerator ['openvino']",
        "parameters ['intra_op_thread_count']",
        str(config),
    ):
        assert field in warning
    assert "kiln_bucketing" not in warning  # Kiln's own keys are honoured
    assert "priority" not in warning  # priority levels are honoured (tests/test_batcher_priority.py)


def test_a_sequence_batched_config_is_named_at_load(tmp_path: Path, caplog) -> None:
    root = _doubling(tmp_path, "")
    config = root / "doubling" / "config.pbtxt"
    config.write_text(config.read_text().replace("dynamic_batching { }\n", "sequence_batching { }\n"))
    backend = OnnxRuntimeBackend(Repository(root), OrtOptions(lone_request_threads=0))

    async def body():
        await backend.start()
        await backend.stop()

    with caplog.at_level(logging.WARNING, logger="serving.execution.loaded_model"):
        asyncio.run(body())
    assert any("does not honour sequence_batching" in r.getMessage() for r in caplog.records)


def test_an_exported_config_is_not_warned_about(tmp_path: Path, caplog) -> None:
    backend = OnnxRuntimeBackend(Repository(_doubling(tmp_path, "")), OrtOptions(lone_request_threads=0))

    async def body():
        await backend.start()
        await backend.stop()

    with caplog.at_level(logging.WARNING, logger="serving.execution.loaded_model"):
        asyncio.run(body())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_exports_own_tensorrt_accelerator_is_not_named_but_one_added_by_hand_is() -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from serving.execution.loaded_model import unhonoured_fields

    text = 'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }'
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert unhonoured_fields(config, exported=True) == []
    assert unhonoured_fields(config) == [
        "optimization.execution_accelerators.gpu_execution_accelerator ['tensorrt']"
    ]


def test_an_unknown_models_404_names_twenty_models_at_most_and_counts_the_rest(tmp_path: Path) -> None:
    from serving.errors import ModelNotFound

    repository = Repository(tmp_path)
    few = [f"m{i:02d}" for i in range(3)]
    repository.entries = dict.fromkeys(few)
    with pytest.raises(ModelNotFound, match=r"available: \['m00', 'm01', 'm02'\]$"):
        repository.get("nope")
    many = [f"m{i:02d}" for i in range(25)]
    repository.entries = dict.fromkeys(many)
    with pytest.raises(
        ModelNotFound, match=r"'m19'\] and 5 more \(POST /v2/repository/index lists them all\)"
    ):
        repository.get("nope")


def test_the_config_endpoint_fills_in_what_triton_fills_in_and_leaves_the_loaded_config_alone() -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from serving.execution.repository import RepositoryEntry

    text = 'name: "m" platform: "onnxruntime_onnx" instance_group [{ kind: KIND_CPU }, { name: "mine" count: 2 }]'
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    shown = RepositoryEntry(name="m", path=Path("m"), config=config).config_dict()
    assert shown["backend"] == "onnxruntime"
    groups = [(g["name"], g["count"], g["kind"]) for g in shown["instance_group"]]
    assert groups == [("m_0", 1, "KIND_CPU"), ("mine", 2, "KIND_AUTO")]
    assert (
        config.backend == "" and config.instance_group[0].name == "" and config.instance_group[0].count == 0
    )


def test_the_repository_index_gives_a_model_that_failed_to_load_its_load_error_as_reason(
    tmp_path: Path,
) -> None:
    from serving.protocol.repository_index import repository_index

    root = _doubling(tmp_path, "")
    (root / "doubling" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    backend = OnnxRuntimeBackend(Repository(root), OrtOptions(lone_request_threads=0))

    async def body():
        await backend.start()
        try:
            return await repository_index(backend)
        finally:
            await backend.stop()

    (entry,) = asyncio.run(body())
    assert (entry["name"], entry["state"]) == ("doubling", "UNAVAILABLE")
    assert entry["reason"] == backend.load_error("doubling") and "model.onnx" in entry["reason"]


def test_statistics_of_every_model_leave_out_one_that_failed_to_load_as_triton_does(tmp_path: Path) -> None:
    from serving.metrics import GatewayMetrics
    from serving.protocol.statistics import model_statistics

    root = _doubling(tmp_path / "broken", "")
    (root / "doubling" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    backends = [
        OnnxRuntimeBackend(Repository(r), OrtOptions(lone_request_threads=0))
        for r in (root, _doubling(tmp_path, ""))
    ]

    async def body(backend):
        await backend.start()
        try:
            return await model_statistics(backend, GatewayMetrics())
        finally:
            await backend.stop()

    broken, loaded = (asyncio.run(body(b)) for b in backends)
    assert broken == [] and [(s["name"], s["version"]) for s in loaded] == [("doubling", "1")]
