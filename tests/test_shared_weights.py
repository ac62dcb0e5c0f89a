"""Every CPU session of a model maps one optimized copy of its weights (serving/execution/shared_weights.py):
the same answers as sessions of their own, one file whatever the number of sessions or workers, and a
model that cannot be shared loads as before."""

from __future__ import annotations

import asyncio
import logging
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from serving.execution.shared_weights import GRAPH, WEIGHTS, WeightStore
from serving.metrics import GatewayMetrics
from tests.repo_fixtures import MAX_BATCH, SIZE, build_classifier_repository
from tests.waiting import until

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
        root = backend._opener.weights.root if backend._opener.weights is not None else Path()
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


def test_an_idle_instance_shrinks_its_sessions_arena_after_a_merged_batch_and_answers_the_same(repository):
    """``release_idle_s`` after a merged batch, the instance's batch session runs once with ONNX
    Runtime's arena shrinkage (``LoadedModel.release``, without error: counted, and exported as
    ``kiln_memory_releases_total``); answers after it equal those before."""
    metrics = GatewayMetrics()

    async def body() -> tuple[list[dict], list[dict], int]:
        options = OrtOptions(release_idle_s=0.05)
        backend = OnnxRuntimeBackend(Repository(repository), options, metrics=metrics)
        await backend.start()
        try:
            batcher = backend._loaded("lenet", "").batcher
            batch = images(MAX_BATCH)

            async def answers() -> list[dict]:
                requests = [InferRequest("lenet", {"images": batch[i : i + 1]}) for i in range(MAX_BATCH)]
                return [r.outputs for r in await asyncio.gather(*map(backend.infer, requests))]

            before = await answers()
            await until(lambda: batcher.releases >= 1)
            return before, await answers(), batcher.releases
        finally:
            await backend.stop()

    before, after, releases = asyncio.run(body())
    assert releases >= 1
    assert metrics.sample("kiln_memory_releases_total", model="lenet", kind="batch") >= 1
    for got, want in zip(after, before, strict=True):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


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
    from serving.execution.repository import Repository as Repo
    from serving.lifespan import make_backend
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


def matmul_stack(path: Path, layers: int = 4, width: int = 1024) -> Path:
    """A graph of ``layers`` MatMuls with constant ``width`` x ``width`` float weights (4 MiB each at
    1024): the operator whose weights ONNX Runtime's CPU kernels pre-pack."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"w{i}")
        for i in range(layers)
    ]
    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}"])
        for i in range(layers)
    ]
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", width])],
        [helper.make_tensor_value_info(f"h{layers - 1}", TensorProto.FLOAT, ["rows", width])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_the_store_saves_the_kernels_pre_packed_weights_beside_the_graph(tmp_path):
    import onnx

    (tmp_path / "store").mkdir()
    graph = WeightStore(tmp_path / "store").graph_for(
        matmul_stack(tmp_path / "stack.onnx", 2, 256), PROVIDERS
    )
    assert graph is not None
    saved = onnx.load(str(graph), load_external_data=False)
    for tensor in saved.graph.initializer:
        keys = {entry.key for entry in tensor.external_data}
        assert "location" in keys and any(key.startswith("prepacked") for key in keys), (tensor.name, keys)


SESSIONS_PROBE = """
import sys
import numpy as np
import onnxruntime as ort
from pathlib import Path
from serving.execution.shared_weights import WeightStore, shared_options

def private_mib():
    fields = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup") if ":" in line)
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024

model, store = Path(sys.argv[1]), Path(sys.argv[2])
graph = WeightStore(store).graph_for(model, ["CPUExecutionProvider"])
x = np.ones((4, 1024), np.float32)
sessions, grown = [], []
for _ in range(3):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    shared_options(options)
    before = private_mib()
    sessions.append(ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"]))
    sessions[-1].run(None, {"x": x})
    grown.append(private_mib() - before)
print(" ".join(f"{g:.1f}" for g in grown))
"""


@pytest.mark.skipif(
    not Path("/proc/self/smaps_rollup").exists(), reason="reads Linux's /proc/self/smaps_rollup"
)
def test_sessions_of_the_stores_graph_add_no_copy_of_the_weights(tmp_path):
    """Each session of a graph whose pre-packed weights were not saved packs a copy of its own (16 MiB
    here, in private memory); sessions of the store's graph map the saved ones."""
    import subprocess

    model = matmul_stack(tmp_path / "stack.onnx")  # 16 MiB of weights
    (tmp_path / "store").mkdir()
    probe = subprocess.run(
        [sys.executable, "-c", SESSIONS_PROBE, str(model), str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    grown = [float(value) for value in probe.stdout.split()]
    # the second and third sessions: a few MiB of their own at most, where a copy each would be 32
    assert sum(grown[1:]) < 8, f"private MiB each session added: {grown}"


TRIM_PROBE = """
import numpy as np
from serving.execution.shared_weights import return_freed_memory

def private_mib():
    fields = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup") if ":" in line)
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024

held = [np.ones(16 * 1024, np.float32) for _ in range(3000)]  # 64 KiB each: from the heap, not mmap
keep = held[-1]  # one block above the freed ones, as a loaded model's would be
del held
freed = private_mib()
trimmed = return_freed_memory()
print(trimmed, freed, private_mib())
"""


@pytest.mark.skipif(
    not Path("/proc/self/smaps_rollup").exists() or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc_trim, read through Linux's /proc/self/smaps_rollup",
)
def test_freed_heap_memory_goes_back_to_the_system():
    """What loading frees (a model read whole, the optimizing session's copies) stays in glibc's heap
    until trimmed; the gateway trims once its models are loaded."""
    import subprocess

    probe = subprocess.run(
        [sys.executable, "-c", TRIM_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    trimmed, freed, after = probe.stdout.split()
    assert trimmed == "True"
    assert float(freed) - float(after) > 100, f"private MiB {freed} before the trim, {after} after"
