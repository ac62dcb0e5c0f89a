"""The python flavour's layout: instance count and threads as written to config.pbtxt (no Triton started).

The repository is hand-written (a config and a stand-in model.onnx: the flavour only copies it), so
these run without exporting a model or starting the server.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from serving.triton import TritonServer, derive_python_flavour
from serving.triton.flavour import python_config, read_config

CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU
CONFIG = """name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 8
input { name: "images" data_type: TYPE_UINT8 dims: [16, 16, 1] }
output { name: "logits" data_type: TYPE_FP32 dims: [3] }
instance_group { count: 1 kind: KIND_GPU gpus: [0] }
dynamic_batching { max_queue_delay_microseconds: 500 }
"""

# What derive_python_flavour(..., threads=1, instances=2) writes for CONFIG.
GOLDEN_TWO_INSTANCES = """name: "tiny"
max_batch_size: 8
input {
  name: "images"
  data_type: TYPE_UINT8
  dims: 16
  dims: 16
  dims: 1
}
output {
  name: "logits"
  data_type: TYPE_FP32
  dims: 3
}
instance_group {
  count: 2
  kind: KIND_CPU
}
dynamic_batching {
  max_queue_delay_microseconds: 500
}
parameters {
  key: "intra_op_num_threads"
  value {
    string_value: "1"
  }
}
parameters {
  key: "onnx_file"
  value {
    string_value: "model.onnx"
  }
}
backend: "python"
"""


def _repository(root: Path, config: str = CONFIG) -> Path:
    (root / "tiny" / "1").mkdir(parents=True)
    (root / "tiny" / "config.pbtxt").write_text(config)
    (root / "tiny" / "1" / "model.onnx").write_bytes(b"not parsed by the flavour")
    return root


def test_the_instance_count_given_replaces_the_exported_one_in_the_written_config(tmp_path: Path) -> None:
    derive_python_flavour(_repository(tmp_path / "repo"), tmp_path / "out", threads=1, instances=2)
    assert (tmp_path / "out/tiny/config.pbtxt").read_text() == GOLDEN_TWO_INSTANCES


def test_without_an_instance_count_the_exported_instance_groups_stay_as_they_are(tmp_path: Path) -> None:
    derive_python_flavour(_repository(tmp_path / "repo"), tmp_path / "out", threads=2)
    expected = GOLDEN_TWO_INSTANCES.replace("count: 2", "count: 1").replace(
        'string_value: "1"', 'string_value: "2"'
    )
    assert (tmp_path / "out/tiny/config.pbtxt").read_text() == expected


def test_every_instance_group_gets_the_count_and_a_config_without_one_gets_a_cpu_group(
    tmp_path: Path,
) -> None:
    two_groups = CONFIG.replace(
        "instance_group { count: 1 kind: KIND_GPU gpus: [0] }",
        "instance_group { count: 1 kind: KIND_GPU gpus: [0] } instance_group { count: 3 kind: KIND_CPU }",
    )
    path = _repository(tmp_path / "repo", two_groups) / "tiny" / "config.pbtxt"
    wrapped = python_config(read_config(path), instances=4)
    assert [(g.count, g.kind) for g in wrapped.instance_group] == [(4, CPU), (4, CPU)]
    path.write_text(CONFIG.replace("instance_group { count: 1 kind: KIND_GPU gpus: [0] }\n", ""))
    added = python_config(read_config(path), instances=2).instance_group
    assert [(g.count, g.kind) for g in added] == [(2, CPU)]
    assert not python_config(read_config(path)).instance_group  # left to Triton's default, as before


def test_an_instance_count_below_one_is_refused(tmp_path: Path) -> None:
    path = _repository(tmp_path / "repo") / "tiny" / "config.pbtxt"
    with pytest.raises(ValueError, match="at least 1"):
        python_config(read_config(path), instances=0)


def test_the_triton_server_derives_its_flavour_at_the_instance_count_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start() is cut short after the flavour is written: no server binary runs."""
    from serving.triton import server as server_module

    class Stop(Exception):
        pass

    def no_backends(*_: object) -> Path:
        raise Stop

    monkeypatch.setattr(server_module, "find_triton", lambda: object())
    monkeypatch.setattr(server_module, "prepare_backends", no_backends)
    triton = TritonServer(_repository(tmp_path / "repo"), tmp_path / "work", threads=1, instances=2)
    with pytest.raises(Stop):
        triton.start()
    assert (tmp_path / "work/model_repository/tiny/config.pbtxt").read_text() == GOLDEN_TWO_INSTANCES


def test_hidden_directories_an_export_leaves_are_not_carried_into_the_flavour(tmp_path: Path) -> None:
    """A killed export's staging copy (``.<entry>.tmp-*``) holds a whole entry; Triton would refuse
    the repository ("unexpected directory name") if the flavour carried it."""
    repository = _repository(tmp_path / "repo")
    shutil.copytree(repository / "tiny", repository / ".tiny.tmp-host-1-abcd")
    report = derive_python_flavour(repository, tmp_path / "out", threads=1)
    assert report.wrapped == ["tiny"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny"]
