"""TensorRT 11 removed the weak-typing builder flags export/tensorrt.py builds fp16 engines with
(``BuilderFlag.FP16``, deprecated since 10.12): the gpu extra admitted it (``tensorrt>=10.0``), and an
export on it failed on the missing flag instead of skipping the engines with a reason. TensorRT is not
needed: a stand-in module carries the version."""

from __future__ import annotations

import sys
import tomllib
import types
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement  # pytest's own dependency

from export import tensorrt

ROOT = Path(__file__).resolve().parent.parent


def _installed(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    """``import tensorrt`` gives a module of ``version`` on a machine with a CUDA GPU."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_tensorrt_11_is_skipped_with_a_reason_naming_the_version_kiln_builds_with(monkeypatch):
    _installed(monkeypatch, "11.5.0.3")
    build, reason = tensorrt.should_build("auto")
    assert not build
    assert "tensorrt 11.5.0.3" in reason and "tensorrt<11" in reason
    with pytest.raises(tensorrt.TensorRTError, match="required by --tensorrt on"):
        tensorrt.should_build("on")


def test_tensorrt_10_still_builds_engines(monkeypatch):
    _installed(monkeypatch, "10.16.1.11")
    assert tensorrt.should_build("auto") == (True, "TensorRT available")


def test_the_gpu_extra_admits_the_pinned_tensorrt_10_and_no_tensorrt_11():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (req,) = [Requirement(r) for r in extras["gpu"] if Requirement(r).name == "tensorrt"]
    pins = (ROOT / "constraints" / "gpu.txt").read_text().splitlines()
    pinned = next(line.split("==")[1] for line in pins if line.startswith("tensorrt=="))
    assert req.specifier.contains(pinned)
    assert not req.specifier.contains("11.0.0")
