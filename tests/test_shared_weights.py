"""Every CPU session of a model maps one optimized copy of its weights (serving/execution/shared_weights.py):
the same answers as sessions of their own, one file whatever the number of sessions or workers, and a
model that cannot be shared loads as before."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend, OrtOptions
from serving.execution.repository import Repository
from serving.execution.shared_weights import GRAPH, WEIGHTS, WeightStore
from tests.repo_fixtures import MAX_BATCH, SIZE, build_classifier_repository

PROVIDERS = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("shared") / "repo")


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 1), dtype=np.uint8)


def mapped_files() -> set[str]:
    """The files this process maps (Linux)."""
    with open("/proc/self/maps") as maps:
        return {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6}


async def serve(
    repository: Path, options: OrtOptions, batches: list[int]
) -> tuple[list[dict], set[str], Path]:
    """Each batch's answers (one request an image, sent together), the files mapped while the backend
    served and its store's directory."""
    backend = OnnxRuntimeBackend(Repository(repository), options)
    await backend.start()
    try:
        answers = []
        for seed, size in enumerate(batches):
            batch = images(size, seed)
            requests = [
                backend.infer(InferRequest("lenet", {"images": batch[i : i + 1]})) for i in range(size)
            ]
            answers += [response.outputs for response in await asyncio.gather(*requests)]
        root = backend._weights.root if backend._weights is not None else Path()
        return answers, mapped_files() if sys.platform.startswith("linux") else set(), root
    finally:
        await backend.stop()


def test_the_batch_and_lone_sessions_answer_as_sessions_of_their_own_and_map_one_file(repository, caplog):
    batches = [1, 1, MAX_BATCH, 3, 1]  # lone requests and merged batches
    with caplog.at_level(logging.INFO, logger="serving.execution.onnxruntime"):
        shared, maps, root = asyncio.run(serve(repository, OrtOptions(lone_request_threads=2), batches))
        own, own_maps, _ = asyncio.run(
            serve(repository, OrtOptions(lone_request_threads=2, share_weights=False), batches)
        )
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model lenet version")]
    assert [line.rpartition("weights ")[2] for line in loaded] == ["shared", "one copy a session"], loaded
    assert len(shared) == sum(batches)
    for got, want in zip(shared, own, strict=True):
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    if sys.platform.startswith("linux"):
        weights = {path for path in maps if path.endswith(f"/{WEIGHTS}") and path.startswith(str(root))}
        assert len(weights) == 1, f"one weights file in {root} mapped, not {weights}"
        assert not any(path.endswith(f"/{WEIGHTS}") for path in own_maps)
    assert not root.exists(), "a backend's own store is removed when it stops"


def test_a_store_optimizes_a_model_once_for_every_store_on_its_directory(repository, tmp_path):
    model = repository / "lenet" / "1" / "model.onnx"
    first, second = WeightStore(tmp_path), WeightStore(tmp_path)  # two workers' stores on one directory
    graph = first.graph_for(model, PROVIDERS)
    assert graph is not None and graph.name == GRAPH and (graph.parent / WEIGHTS).is_file()
    made = graph.stat().st_mtime_ns

    def never(*_args: object) -> None:
        raise AssertionError("the second store should find the first one's graph")

    second._optimize = never  # type: ignore[method-assign]
    assert second.graph_for(model, PROVIDERS) == graph
    assert graph.stat().st_mtime_ns == made
    other = [("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})]
    assert first.graph_for(model, other) != graph  # other providers (or options): another graph
    first.close()
    second.close()
    assert graph.is_file(), "a directory given to a store is its maker's to remove"


def test_a_model_that_cannot_be_optimized_loads_its_own_file(repository, tmp_path, caplog):
    model = repository / "lenet" / "1" / "model.onnx"
    unwritable = tmp_path / "a-file"
    unwritable.write_text("not a directory")
    store = WeightStore(unwritable)
    with caplog.at_level(logging.WARNING, logger="serving.execution.shared_weights"):
        assert store.graph_for(model, PROVIDERS) is None
        assert store.graph_for(model, PROVIDERS) is None  # not tried again
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "load their own copies" in warnings[0], warnings

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert WeightStore(tmp_path / "store-dir-absent-is-made-by-no-one").graph_for(broken, PROVIDERS) is None


def test_the_backend_serves_when_its_store_cannot_be_written(repository, tmp_path):
    unwritable = tmp_path / "a-file"
    unwritable.write_text("not a directory")
    options = OrtOptions(lone_request_threads=2, weights_dir=unwritable)
    answers, maps, _ = asyncio.run(serve(repository, options, [1, 2]))
    own, _, _ = asyncio.run(
        serve(repository, OrtOptions(lone_request_threads=2, share_weights=False), [1, 2])
    )
    for got, want in zip(answers, own, strict=True):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert not any(path.endswith(f"/{WEIGHTS}") for path in maps)


def test_the_command_line_turns_sharing_off_and_workers_are_told_the_directory(tmp_path):
    from serving.__main__ import parse_args
    from serving.app import make_backend
    from serving.execution.repository import Repository as Repo
    from serving.metrics import GatewayMetrics
    from serving.workers import worker_argv

    off = make_backend(
        parse_args(["--model-repository", str(tmp_path), "--no-share-weights"]),
        Repo(tmp_path),
        GatewayMetrics(),
    )
    assert off.options.share_weights is False
    on = make_backend(
        parse_args(["--model-repository", str(tmp_path), "--weights-dir", str(tmp_path)]),
        Repo(tmp_path),
        GatewayMetrics(),
    )
    assert on.options.share_weights is True and on.options.weights_dir == tmp_path
    argv = worker_argv(["--model-repository", "repo"], Path("/dev/shm/board"), 1, tmp_path / "w")
    assert argv[-2:] == ["--weights-dir", str(tmp_path / "w")]
