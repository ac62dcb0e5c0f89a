"""A GPU export writes ``instance_group { count: 1 kind: KIND_GPU }`` and no ``gpus``: Triton's /config
lists the devices it fills in (``gpus: [0]``), the gateway's listed none, so a client reading
``config["instance_group"][0]["gpus"][0]`` from Triton failed against the gateway."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.execution import placement
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.repository import Repository

CONFIG = """name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
instance_group [ { count: 1 kind: %s%s } ]
"""


def _config(root: Path, kind: str, where: placement.Placement, gpus: str = "") -> dict:
    """The /config of entry ``m`` (its group ``kind`` and ``gpus``) as served from ``where``; the
    loaded model stands in for one (only its placement is read)."""
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "1" / "model.onnx").write_bytes(b"not opened here")
    (root / "m" / "config.pbtxt").write_text(CONFIG % (kind, gpus), encoding="utf-8")
    backend = OnnxRuntimeBackend(Repository(root))
    backend._models[("m", "1")] = SimpleNamespace(placement=where)  # type: ignore[assignment]
    return backend.config("m")


@pytest.mark.parametrize("device, gpus", [("cuda:0", [0]), ("cuda:1", [1]), ("cuda", [0])])
def test_a_gpu_group_without_devices_shows_the_one_it_runs_on(
    tmp_path: Path, device: str, gpus: list[int]
) -> None:
    config = _config(tmp_path, "KIND_GPU", placement.Placement(placement.CUDA, device))
    (group,) = config["instance_group"]
    assert (group["name"], group["kind"], group["gpus"]) == ("m_0", "KIND_GPU", gpus)


def test_devices_a_config_gives_and_a_cpu_group_are_shown_as_given(tmp_path: Path) -> None:
    cuda = placement.Placement(placement.CUDA, "cuda:1")
    assert _config(tmp_path / "a", "KIND_GPU", cuda, " gpus: [ 3 ]")["instance_group"][0]["gpus"] == [3]
    cpu = placement.Placement(placement.CPU, "cpu")
    assert _config(tmp_path / "b", "KIND_CPU", cpu)["instance_group"][0]["gpus"] == []
