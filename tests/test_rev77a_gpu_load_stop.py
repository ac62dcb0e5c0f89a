"""A stop signal while GPU models load (they load one at a time, each waiting for the GPU's lock) stops
at the model being loaded: those that waited for the lock are not loaded after it, as a serial load
never loaded them. They were: each waiting thread had passed its stop check before the lock, so a
SIGTERM during start-up waited out up to 3 more GPU loads (a TensorRT build each, minutes)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.execution import placement
from serving.execution.base import LoadingStopped
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from tests.repo_fixtures import write_identity_entries
from tests.waiting import DEADLINE_S, until

NAMES = ("a", "b", "c")


def test_gpu_models_waiting_for_the_lock_are_not_loaded_after_a_stop_signal(tmp_path, monkeypatch) -> None:
    backend = OnnxRuntimeBackend(
        Repository(write_identity_entries(tmp_path, list(NAMES))), OrtOptions(load_threads=len(NAMES))
    )
    planned: list[str] = []  # past the stop check before the lock: each then waits for the GPU's lock
    opened: list[tuple[str, bool]] = []  # (model, whether the stop signal had come)
    first_in, release = threading.Event(), threading.Event()

    def plan(config, providers):  # noqa: ANN001 - placement.plan's
        planned.append(config.name)
        return placement.Placement(placement.CUDA, "cuda:0")

    def open_placed(entry, version, path, where, graph):  # noqa: ANN001 - OnnxRuntimeBackend._open_placed
        opened.append((entry.name, backend._stopping))
        if not first_in.is_set():  # the first holds the lock until the stop signal has come
            first_in.set()
            release.wait(DEADLINE_S)
        raise RuntimeError("no GPU here")  # a failed load: start() goes on to the next

    monkeypatch.setattr(placement, "plan", plan)
    monkeypatch.setattr(backend, "_open_placed", open_placed)

    async def body() -> None:
        start = asyncio.ensure_future(backend.start())
        try:
            await until(lambda: first_in.is_set() and len(planned) == len(NAMES))
            backend.stop_loading()
            release.set()
            with pytest.raises(LoadingStopped) as stopped:
                await start
            first = opened[0][0]
            waited = sorted(set(NAMES) - {first})
            assert str(stopped.value).endswith(f"not loaded: {', '.join(waited)}")
        finally:
            release.set()
            await backend.stop()

    asyncio.run(body())
    assert [name for name, after_stop in opened if after_stop] == []  # none opened after the signal
    assert len(opened) == 1
