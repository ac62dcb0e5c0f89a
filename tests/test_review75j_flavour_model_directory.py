"""A Triton repository whose ONNX model file is a directory (``1/model.onnx/model.onnx`` beside its
external weights, as Triton's onnxruntime backend loads it) is served by the embedded backend; through
``--backend triton`` the python flavour refused the whole repository ("no version directory holds
model.onnx") and its ``model.py`` opened the directory."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from serving.triton.flavour import derive_python_flavour
from tests.test_byo_g_model_directory import _directory_model
from tests.test_triton_audit import _TensorRequest
from tests.test_triton_flavour_hunt import initialized_model
from tests.test_triton_translator_model import stand_in_pb_utils


@pytest.fixture
def onnx_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """serving/triton/onnx_model.py (the module the flavour copies) bound to a stand-in pb_utils."""
    utils = stand_in_pb_utils(monkeypatch, lambda request, name: request.arrays[name])
    utils.triton_string_to_numpy = {"TYPE_FP32": np.float32}.__getitem__
    monkeypatch.delitem(sys.modules, "serving.triton.onnx_model", raising=False)
    yield importlib.import_module("serving.triton.onnx_model")
    sys.modules.pop("serving.triton.onnx_model", None)


def test_the_python_flavour_wraps_a_model_file_that_is_a_directory(tmp_path: Path) -> None:
    repository = _directory_model(tmp_path / "repo")
    report = derive_python_flavour(repository, tmp_path / "flavour")
    assert report.wrapped == ["scaled"]
    version = tmp_path / "flavour" / "scaled" / "1"
    assert (version / "model.py").is_file() and (version / "model.onnx" / "weights.bin").is_file()


def test_the_flavours_model_opens_the_model_onnx_inside_the_directory(
    onnx_model: ModuleType, tmp_path: Path
) -> None:
    instance = initialized_model(onnx_model, _directory_model(tmp_path) / "scaled")
    (answer,) = instance.execute([_TensorRequest(x=np.ones((1, 3), np.float32))])
    assert answer.error is None
    assert dict(answer.outputs)["y"].tolist() == [[2.0, 3.0, 4.0]]
