"""A config naming ``backend: "tensorrt"`` and no platform is a TensorRT plan model to Triton, whose
``AutoCompleteBackendFields`` fills in ``platform: "tensorrt_plan"``: the gateway refused it at load as a
platform and backend "that do not go together", saying Triton refuses it too."""

from __future__ import annotations

from pathlib import Path

from serving.execution.repository import Repository

CONFIG = """name: "plan"
backend: "tensorrt"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ]%s } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def _repository(root: Path, flag: str = "") -> Repository:
    entry = root / "plan"
    (entry / "1").mkdir(parents=True)
    (entry / "1" / "model.plan").write_bytes(b"not read here")
    (entry / "config.pbtxt").write_text(CONFIG % flag, encoding="utf-8")
    return Repository(root)


def test_a_tensorrt_backend_config_without_a_platform_is_completed_not_refused(tmp_path: Path) -> None:
    repository = _repository(tmp_path)
    assert repository.errors == {}
    entry = repository.entries["plan"]
    assert entry.platform == "tensorrt_plan"
    shown = entry.config_dict()
    assert (shown["platform"], shown["backend"], shown["default_model_filename"]) == (
        "tensorrt_plan",
        "tensorrt",
        "model.plan",
    )


def test_a_tensorrt_backend_config_may_flag_a_shape_tensor(tmp_path: Path) -> None:
    """The flag is TensorRT's, and this config is TensorRT's: Triton loads it."""
    repository = _repository(tmp_path, " is_shape_tensor: true")
    assert repository.errors == {}
    assert repository.entries["plan"].config.input[0].is_shape_tensor
