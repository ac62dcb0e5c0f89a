"""A timing cache TensorRT refuses (written on another GPU model, or unreadable) is replaced by a new
one, not a crash after the build (export/tensorrt.py, ``attach_timing_cache``). TensorRT is not
needed: a stand-in builder config behaves as TensorRT's Python docstrings say (python/docstrings/infer/
pyCoreDoc.h): ``set_timing_cache`` returns False on a device mismatch ("a failure will be reported if
the CUDA device property in the provided cache is different from current environment"), and
``get_timing_cache`` returns None "if no timing cache is set"."""

from __future__ import annotations

import logging
import sys
from unittest import mock

import pytest

from export import tensorrt

OTHER_GPU = b"cache-from-an-H100"
UNREADABLE = b"not-a-cache"


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return b"timings of this GPU" if not self.data else self.data + b"+new timings"


class FakeBuilderConfig:
    """TensorRT's IBuilderConfig timing-cache calls, on a GPU other than :data:`OTHER_GPU`'s."""

    def __init__(self) -> None:
        self.attached: FakeTimingCache | None = None

    def create_timing_cache(self, data: bytes) -> FakeTimingCache | None:
        return None if data == UNREADABLE else FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        if cache.data == OTHER_GPU and not ignore_mismatch:
            return False  # refused: nothing attached
        self.attached = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.attached

    def __getattr__(self, name: str) -> mock.MagicMock:  # set_flag, set_memory_pool_limit, ...
        return mock.MagicMock()


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> mock.MagicMock:
    trt = mock.MagicMock()
    builder = trt.Builder.return_value
    builder.build_serialized_network.return_value = b"plan"
    builder.create_builder_config.side_effect = FakeBuilderConfig
    trt.OnnxParser.return_value.parse_from_file.return_value = True
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt, "optimization_profile", lambda spec: [])
    return trt


@pytest.mark.parametrize("stale", [OTHER_GPU, UNREADABLE], ids=["other-gpu", "unreadable"])
def test_a_refused_timing_cache_is_replaced_and_the_engine_built(tmp_path, fake_tensorrt, caplog, stale):
    """Before: the refusal was ignored and ``get_timing_cache().serialize()`` raised AttributeError on
    None (or ``set_timing_cache(None)`` a TypeError) after the plan was built, at every later export too."""
    cache = tmp_path / "repo" / ".kiln_trt_timing.cache"
    cache.parent.mkdir()
    cache.write_bytes(stale)
    plan = tmp_path / "out" / "model.plan"
    with caplog.at_level(logging.WARNING, logger="export.tensorrt"):
        tensorrt.build_engine(tmp_path / "m.onnx", plan, mock.Mock(), timing_cache=cache)
    assert plan.read_bytes() == b"plan"
    assert cache.read_bytes() == b"timings of this GPU"  # the new cache replaced the refused one
    assert "TensorRT refused the timing cache" in caplog.text


def test_an_accepted_timing_cache_is_kept_and_extended(tmp_path, fake_tensorrt, caplog):
    cache = tmp_path / ".kiln_trt_timing.cache"
    cache.write_bytes(b"this GPU's cache")
    with caplog.at_level(logging.WARNING, logger="export.tensorrt"):
        tensorrt.build_engine(tmp_path / "m.onnx", tmp_path / "model.plan", mock.Mock(), timing_cache=cache)
    assert cache.read_bytes() == b"this GPU's cache+new timings"
    assert "refused" not in caplog.text


def test_an_empty_cache_tensorrt_cannot_create_is_a_tensorrt_error():
    config = mock.Mock()
    config.create_timing_cache.return_value = None
    with pytest.raises(tensorrt.TensorRTError, match="could not create an empty timing cache"):
        tensorrt.attach_timing_cache(config, b"")
