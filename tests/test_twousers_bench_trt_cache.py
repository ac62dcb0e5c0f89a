"""The GPU bench's TensorRT engine cache (``bench.gpu``'s ONNX Runtime TensorRT runner) is each user's
own, private directory: one fixed name in /tmp for every user was the first user's on a shared GPU box,
so the others could not save their engines (built again at every run) and loaded the engines its
owner put there."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from types import SimpleNamespace

from bench import gpu
from bench.engines import EngineJob


def engine_cache_of_a_run(monkeypatch) -> Path:
    """Where the TensorRT runner tells ONNX Runtime to keep its engines (no session is made)."""
    asked: list[dict] = []

    def session(_job: EngineJob, providers: list) -> SimpleNamespace:
        asked.append(providers[0][1])
        return SimpleNamespace(get_inputs=lambda: [SimpleNamespace(name="images")])

    monkeypatch.setattr(gpu, "_session", session)
    gpu._ort_tensorrt_runner(EngineJob(gpu.ORT_TENSORRT, "fp16", "model.onnx", (8, 8, 1), (1,), 1, 1.0))
    return Path(asked[0]["trt_engine_cache_path"])


def test_the_engine_cache_is_this_users_private_directory_kept_between_runs(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "kiln-bench-trt-cache").mkdir(mode=0o755)  # what the first user of the box made
    cache = engine_cache_of_a_run(monkeypatch)
    found = os.lstat(cache)
    assert cache.parent == tmp_path and cache.name != "kiln-bench-trt-cache"
    assert found.st_uid == os.getuid() and stat.S_IMODE(found.st_mode) == 0o700
    assert engine_cache_of_a_run(monkeypatch) == cache  # the next run finds its engines


def test_a_directory_planted_under_its_name_is_not_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"kiln-bench-trt-cache-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)  # anyone's engines could be dropped in it
    cache = engine_cache_of_a_run(monkeypatch)
    assert cache != planted and cache.parent == tmp_path
    assert stat.S_IMODE(os.lstat(cache).st_mode) == 0o700
