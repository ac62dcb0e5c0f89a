"""A model whose CUDA provider did not load is refused naming the model (``placement.check_session``),
named from its model file's path, two directories up: for a model file that is a directory
(``scaled/1/model.onnx/model.onnx``, as Triton's onnxruntime backend loads it) that named its version,
"model '1': CUDAExecutionProvider did not load"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving.execution import placement
from serving.execution.ort_options import OrtOptions
from serving.execution.ort_sessions import SessionOpener


class _CpuOnly:
    """A session ONNX Runtime fell back to the CPU for: what it reports of its providers."""

    def get_providers(self) -> list[str]:
        return [placement.CPU]


def _fallen_back(path: str, **_: Any) -> _CpuOnly:
    return _CpuOnly()


@pytest.mark.parametrize("model_file", ["scaled/1/model.onnx", "scaled/1/model.onnx/model.onnx"])
def test_a_cuda_provider_that_did_not_load_names_the_model(
    model_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(placement, "load_cuda_libraries", lambda ort: None)
    opener = SessionOpener(OrtOptions(), session_factory=_fallen_back)
    where = placement.Placement(provider=placement.CUDA, device="cuda:0")
    with pytest.raises(
        placement.PlacementError, match=r"^model 'scaled': CUDAExecutionProvider did not load"
    ):
        opener.open_session(tmp_path / "repository" / model_file, where)
