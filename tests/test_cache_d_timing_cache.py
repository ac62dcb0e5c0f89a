"""The TensorRT timing cache is replaced whole or not at all (export/tensorrt.py): a build that dies or
runs out of room while writing it leaves the previous cache, never a torn one the next build reads.
TensorRT is not needed: a stand-in module serializes a fake cache."""

from __future__ import annotations

import resource
import signal
import sys
from pathlib import Path
from unittest import mock

import pytest

from export import tensorrt
from export.specs import GraphSpec

OLD = b"old-cache" * 10
NEW = b"N" * 1_000_000  # larger than the file-size limit below


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """``tensorrt`` whose builder returns a tiny plan and whose timing cache serializes to :data:`NEW`."""
    trt = mock.MagicMock()
    builder = trt.Builder.return_value
    builder.build_serialized_network.return_value = b"plan"
    builder.create_builder_config.return_value.get_timing_cache.return_value.serialize.return_value = NEW
    trt.OnnxParser.return_value.parse_from_file.return_value = True
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt, "optimization_profile", lambda spec: [])
    return trt


@pytest.fixture
def files_at_most_64k():
    """Writes past 64 KiB fail (``EFBIG``) in this process, as on a disk that fills mid-write."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_build_that_fails_writing_the_timing_cache_leaves_the_previous_one_whole(
    tmp_path, fake_tensorrt, files_at_most_64k
):
    """Before: the cache was truncated and rewritten in place, so a write cut short left its first 64 KiB
    as the cache that every later build of the repository read."""
    cache = tmp_path / "repo" / ".kiln_trt_timing.cache"
    cache.parent.mkdir()
    cache.write_bytes(OLD)
    spec = mock.create_autospec(GraphSpec, instance=True)
    with pytest.raises(OSError):
        tensorrt.build_engine(tmp_path / "m.onnx", tmp_path / "out" / "model.plan", spec, timing_cache=cache)
    assert cache.read_bytes() == OLD
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no partial file left beside it


def test_a_build_replaces_the_timing_cache_with_what_tensorrt_serialized(tmp_path, fake_tensorrt):
    cache = tmp_path / "repo" / ".kiln_trt_timing.cache"
    tensorrt.build_engine(
        tmp_path / "m.onnx", tmp_path / "out" / "model.plan", mock.Mock(), timing_cache=cache
    )
    assert cache.read_bytes() == NEW
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]


def test_the_write_helper_replaces_a_cache_whole(tmp_path):
    cache = tmp_path / "c" / "timing.cache"
    tensorrt.write_timing_cache(cache, OLD)
    tensorrt.write_timing_cache(cache, b"x")
    assert cache.read_bytes() == b"x"
    assert [p.name for p in Path(cache.parent).iterdir()] == ["timing.cache"]
