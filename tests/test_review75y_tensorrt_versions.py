"""TensorRT versions export/tensorrt.py cannot build with are skipped with a reason, older ones too: a
TensorRT 8 (an older NGC or JetPack image, dependencies on ``PYTHONPATH``) made ``create_network(0)``
an implicit-batch network, which the ONNX parser refuses, so ``--tensorrt auto`` stopped the export
with a parse error instead of skipping the engines. A stand-in module carries the version."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from export import tensorrt


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """``installed(version)``: ``import tensorrt`` gives a module of that version, beside a CUDA GPU;
    ``installed(None)`` gives one without ``__version__``."""

    def install(version: str | None) -> None:
        module = types.SimpleNamespace() if version is None else types.SimpleNamespace(__version__=version)
        monkeypatch.setitem(sys.modules, "tensorrt", module)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return install


@pytest.mark.parametrize("version", ["8.6.1.6", "9.3.0.post12.dev1"])
def test_a_tensorrt_older_than_10_is_skipped_with_a_reason_naming_it(installed, version: str) -> None:
    installed(version)
    build, reason = tensorrt.should_build("auto")
    assert not build
    assert f"tensorrt {version}" in reason and "tensorrt==10.*" in reason


@pytest.mark.parametrize("version", ["11.0.0.post1", "12.1"])
def test_a_tensorrt_newer_than_10_is_still_skipped(installed, version: str) -> None:
    installed(version)
    build, reason = tensorrt.should_build("auto")
    assert not build and "BuilderFlag.FP16" in reason


@pytest.mark.parametrize("version", ["10.16.1.11", "10.0.0b6", "", None])
def test_tensorrt_10_or_an_unreadable_version_still_builds(installed, version: str | None) -> None:
    installed(version)
    assert tensorrt.should_build("auto") == (True, "TensorRT available")
