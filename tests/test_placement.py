"""Where a model runs and at which shapes: placement read from the config, shown, and bucketed
execution on CPU that pads merged batches to a bucket and changes no output."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.execution import bound_session, placement
from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions, spin_entries
from serving.execution.repository import Repository
from serving.metrics import GatewayMetrics
from tests.repo_fixtures import MAX_BATCH, SIZE, build_classifier_repository

CPU_ONLY = ["CPUExecutionProvider"]
WITH_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(f'name: "m" max_batch_size: 8 {text}', model_config_pb2.ModelConfig())


def test_a_cpu_config_runs_on_the_cpu_provider_without_buckets_by_default():
    where = placement.plan(
        config("instance_group { kind: KIND_CPU } dynamic_batching { preferred_batch_size: 4 }"), WITH_CUDA
    )
    assert (where.provider, where.device, where.buckets) == ("CPUExecutionProvider", "cpu", ())
    assert where.providers() == ["CPUExecutionProvider"]


def test_a_gpu_config_without_a_cuda_provider_is_an_error_naming_the_model():
    with pytest.raises(
        placement.PlacementError, match="model 'm' asks for KIND_GPU but ONNX Runtime has no CUDA"
    ):
        placement.plan(config("instance_group { kind: KIND_GPU }"), CPU_ONLY)


def test_a_gpu_config_buckets_by_default_with_its_device_and_conv_algorithm_search():
    text = (
        "instance_group { kind: KIND_GPU gpus: 1 } dynamic_batching { preferred_batch_size: [1, 2, 4] } "
        'parameters { key: "cudnn_conv_algo_search" value { string_value: "1" } }'
    )
    where = placement.plan(config(text), WITH_CUDA)
    assert (where.provider, where.device, where.buckets) == ("CUDAExecutionProvider", "cuda:1", (1, 2, 4, 8))
    assert where.providers()[0] == (
        "CUDAExecutionProvider",
        {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC"},
    )
    assert [where.bucket_for(n) for n in (1, 3, 5, 8)] == [1, 4, 8, 8]
    default = placement.plan(config("instance_group { kind: KIND_GPU }"), WITH_CUDA)
    assert (default.device, default.providers()[0]) == ("cuda:0", ("CUDAExecutionProvider", {}))


def test_auto_means_the_gpu_when_there_is_one_and_bucketing_can_be_switched_off():
    off = 'parameters { key: "kiln_bucketing" value { string_value: "0" } }'
    assert placement.plan(config(f"instance_group {{ kind: KIND_AUTO }} {off}"), WITH_CUDA).buckets == ()
    assert (
        placement.plan(config("instance_group { kind: KIND_AUTO }"), CPU_ONLY).provider
        == "CPUExecutionProvider"
    )


class FakeSession:
    def __init__(self, active):
        self.active = active

    def get_providers(self):
        return self.active


def test_a_session_that_fell_back_to_the_cpu_is_refused_not_served():
    where = placement.plan(config("instance_group { kind: KIND_GPU }"), WITH_CUDA)
    placement.check_session(FakeSession(WITH_CUDA), where, "m")  # the CUDA provider loaded
    with pytest.raises(
        placement.PlacementError,
        match=r"model 'm': CUDAExecutionProvider did not load \(active providers: CPUExecutionProvider\)",
    ):
        placement.check_session(FakeSession(CPU_ONLY), where, "m")
    placement.check_session(FakeSession(CPU_ONLY), placement.plan(config(""), CPU_ONLY), "m")


def test_the_cuda_libraries_are_preloaded_once_per_process(monkeypatch):
    calls = []

    class FakeOrt:
        def preload_dlls(self):
            calls.append("preload")

    monkeypatch.setattr(placement, "_cuda_libraries_loaded", False)
    placement.load_cuda_libraries(FakeOrt())
    placement.load_cuda_libraries(FakeOrt())
    assert calls == ["preload"]


def test_padding_appends_zero_rows_and_leaves_a_full_batch_alone():
    x = np.ones((3, 2), np.float32)
    padded = placement.pad_rows({"x": x}, 4)["x"]
    assert padded.shape == (4, 2) and padded[:3].sum() == 6 and not padded[3].any()
    assert placement.pad_rows({"x": x}, 3)["x"] is x


@pytest.fixture(scope="module")
def repositories(tmp_path_factory):
    """The exported lenet entry as written, and a copy asking for buckets 2, 4 and 8 on CPU."""
    plain = build_classifier_repository(tmp_path_factory.mktemp("placement") / "plain")
    bucketed = plain.parent / "bucketed"
    shutil.copytree(plain, bucketed)
    path = bucketed / "lenet" / "config.pbtxt"
    cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    cfg.dynamic_batching.preferred_batch_size.extend([2, 4])
    cfg.parameters["kiln_bucketing"].string_value = "1"
    path.write_text(text_format.MessageToString(cfg))
    return plain, bucketed


class Recording:
    """A session factory that records the batch size of every run, warm-up included."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, path, sess_options=None, providers=None):
        import onnxruntime as ort

        session = ort.InferenceSession(path, sess_options=sess_options, providers=providers)
        sizes = self.sizes

        class Session:
            def __getattr__(self, name):
                return getattr(session, name)

            def run(self, names, feeds):
                sizes.append(next(iter(feeds.values())).shape[0])
                return session.run(names, feeds)

        return Session()


async def _answers(root, batches, factory=None, metrics=None):
    backend = OnnxRuntimeBackend(Repository(root), metrics=metrics, session_factory=factory)
    await backend.start()
    try:
        rng = np.random.default_rng(0)
        outs = []
        for rows in batches:
            images = rng.integers(0, 256, (rows, SIZE, SIZE, 1), dtype=np.uint8)
            outs.append((await backend.infer(InferRequest("lenet", {"images": images}))).outputs)
        return outs, backend.config("lenet")
    finally:
        await backend.stop()


def test_bucketed_execution_on_cpu_changes_no_output_and_no_padding_row_reaches_a_response(repositories):
    plain, bucketed = repositories
    batches = [1, 3, 5, MAX_BATCH]
    expected, _ = asyncio.run(_answers(plain, batches))
    recorder, metrics = Recording(), GatewayMetrics()
    got, shown = asyncio.run(_answers(bucketed, batches, recorder, metrics))
    for rows, want, have in zip(batches, expected, got, strict=True):
        for name in want:
            assert have[name].shape[0] == rows
            np.testing.assert_array_equal(have[name], want[name])
    assert recorder.sizes == [2, 4, 8, 2, 4, 8, 8]  # every bucket warmed at load, then padded runs only
    params = shown["parameters"]
    assert (
        params["kiln_buckets"] == {"string_value": "2,4,8"}
        and params["kiln_provider"]["string_value"] == "CPUExecutionProvider"
    )
    labels = {
        "model": "lenet",
        "version": "1",
        "provider": "CPUExecutionProvider",
        "device": "cpu",
        "buckets": "2,4,8",
    }
    assert metrics.sample("kiln_model_placement", **labels) == 1.0


def test_a_gpu_config_on_a_machine_without_cuda_fails_to_load_with_the_reason(repositories, tmp_path):
    plain, _ = repositories
    root = tmp_path / "gpu"
    shutil.copytree(plain, root)
    path = root / "lenet" / "config.pbtxt"
    path.write_text(path.read_text().replace("KIND_CPU", "KIND_GPU"))

    async def check():
        backend = OnnxRuntimeBackend(Repository(root))
        await backend.start()
        try:
            assert not await backend.model_ready("lenet")
            with pytest.raises(Exception, match="asks for KIND_GPU but ONNX Runtime has no CUDA provider"):
                await backend.infer(InferRequest("lenet", {"images": np.zeros((1, SIZE, SIZE, 1), np.uint8)}))
        finally:
            await backend.stop()

    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a CUDA provider: the GPU config would load")
    asyncio.run(check())


SPIN_KEYS = ("session.intra_op.allow_spinning", "session.intra_op.spin_duration_us")


def test_idle_intra_op_threads_spin_only_as_long_as_asked(repositories):
    import onnxruntime as ort

    plain, _ = repositories
    seen: list[tuple[str, str]] = []

    def factory(path, sess_options=None, providers=None):
        import onnxruntime as ort

        def entry(key):
            try:
                return sess_options.get_session_config_entry(key)
            except RuntimeError:  # not set: ONNX Runtime's default
                return "default"

        seen.append(tuple(entry(key) for key in SPIN_KEYS))
        return ort.InferenceSession(path, sess_options=sess_options, providers=providers)

    async def load(options):
        backend = OnnxRuntimeBackend(Repository(plain), options, session_factory=factory)
        await backend.start()
        await backend.stop()

    for spin_us in (20, 0, None):  # the batch sessions only
        asyncio.run(load(OrtOptions(spin_us=spin_us, lone_request_threads=0)))
    bounded = tuple(spin_entries(20, ort.__version__).get(key, "default") for key in SPIN_KEYS)
    assert seen == [bounded, ("0", "default"), ("default", "default")]


def test_a_bounded_spin_is_no_spin_where_onnx_runtime_would_not_bound_it():
    assert spin_entries(50, "1.26.0") == {
        "session.intra_op.allow_spinning": "1",
        "session.intra_op.spin_duration_us": "50",
    }
    assert spin_entries(50, "1.25.2") == {"session.intra_op.allow_spinning": "0"}
    assert spin_entries(50, "1.22.0.dev20250101") == {"session.intra_op.allow_spinning": "0"}
    assert spin_entries(0, "1.32.0") == {"session.intra_op.allow_spinning": "0"}
    assert spin_entries(None, "1.18.0") == {}


GRAPHS = 'parameters { key: "kiln_cuda_graphs" value { string_value: "1" } }'


def test_cuda_graphs_need_the_cuda_provider_and_buckets(caplog):
    text = f"instance_group {{ kind: KIND_GPU }} dynamic_batching {{ preferred_batch_size: 4 }} {GRAPHS}"
    gpu = placement.plan(config(text), WITH_CUDA)
    assert gpu.cuda_graphs and gpu.buckets == (4, 8)
    assert gpu.providers()[0] == ("CUDAExecutionProvider", {"enable_cuda_graph": "1"})
    assert gpu.config_parameters()["kiln_cuda_graph_replay"] == {"string_value": "on"}
    off = 'parameters { key: "kiln_bucketing" value { string_value: "0" } }'
    with caplog.at_level(logging.WARNING):
        unbucketed = placement.plan(config(f"instance_group {{ kind: KIND_GPU }} {GRAPHS} {off}"), WITH_CUDA)
        cpu = placement.plan(config(f"instance_group {{ kind: KIND_CPU }} {GRAPHS}"), WITH_CUDA)
    assert not unbucketed.cuda_graphs and not cpu.cuda_graphs
    assert "enable_cuda_graph" not in (unbucketed.provider_options or {})
    assert caplog.text.count("kiln_cuda_graphs needs the CUDA provider and bucketing") == 2


def test_a_bound_session_answers_as_its_session_from_its_fixed_buffers(repositories):
    import onnxruntime as ort

    from serving.execution.bound_session import BoundSession

    plain, _ = repositories
    model = str(plain / "lenet" / "1" / "model.onnx")
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    bound = BoundSession(session, 4, "cpu")
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(1)
    for _ in range(2):  # the second batch is copied over the first, into the same buffers
        feeds = {"images": rng.integers(0, 256, (4, SIZE, SIZE, 1), dtype=np.uint8)}
        for want, have in zip(session.run(names, feeds), bound.run(names, feeds), strict=True):
            np.testing.assert_array_equal(have, want)
    np.testing.assert_array_equal(bound.run(names[-1:], feeds)[0], session.run(names[-1:], feeds)[0])
    dynamic = SimpleNamespace(name="tokens", shape=["batch", "length"], type="tensor(int64)")
    with pytest.raises(ValueError, match="tokens has dynamic non-batch dimensions"):
        bound_session._shape(dynamic, 4)


def test_cuda_graph_buckets_run_on_bound_buffers_and_change_no_output(repositories, monkeypatch):
    """On this machine the bound buffers are on the CPU and no graph is captured; the path is the same."""
    from serving.execution import ort_sessions

    plain, bucketed = repositories
    batches = [1, 3, 5, MAX_BATCH]
    expected, _ = asyncio.run(_answers(plain, batches))
    plan = placement.plan
    monkeypatch.setattr(placement, "plan", lambda *a: dataclasses.replace(plan(*a), cuda_graphs=True))
    bound, real = [], ort_sessions.BoundSession
    monkeypatch.setattr(ort_sessions, "BoundSession", lambda *a: bound.append(a[1:]) or real(*a))
    got, shown = asyncio.run(_answers(bucketed, batches))
    for want, have in zip(expected, got, strict=True):
        for name in want:
            np.testing.assert_array_equal(have[name], want[name])
    assert bound == [(2, "cpu", 0), (4, "cpu", 0), (8, "cpu", 0)]
    assert shown["parameters"]["kiln_cuda_graph_replay"] == {"string_value": "on"}


def test_a_model_whose_cuda_graphs_cannot_be_captured_serves_without_them(repositories, monkeypatch, caplog):
    """Graphs are the GPU export's default, so a capture that fails at load (a node off the CUDA provider,
    say) must not cost the model: it loads on plain bucket sessions, says why, and answers the same."""
    from serving.execution import ort_sessions

    plain, bucketed = repositories
    batches = [1, 3, MAX_BATCH]
    expected, _ = asyncio.run(_answers(plain, batches))
    plan = placement.plan
    graphs = dict(provider_options={"enable_cuda_graph": "1"}, cuda_graphs=True)
    monkeypatch.setattr(placement, "plan", lambda *a: dataclasses.replace(plan(*a), **graphs))

    class Uncapturable(ort_sessions.BoundSession):
        def run(self, names, feeds):
            raise RuntimeError("This session cannot use the graph capture feature")

    monkeypatch.setattr(ort_sessions, "BoundSession", Uncapturable)
    opened = []
    real_open = ort_sessions.SessionOpener.open_session
    monkeypatch.setattr(
        ort_sessions.SessionOpener,
        "open_session",
        lambda self, path, where, *a, **k: opened.append(where) or real_open(self, path, where, *a, **k),
    )
    with caplog.at_level(logging.WARNING):
        got, shown = asyncio.run(_answers(bucketed, batches))
    for want, have in zip(expected, got, strict=True):
        for name in want:
            np.testing.assert_array_equal(have[name], want[name])
    assert shown["parameters"]["kiln_cuda_graph_replay"] == {"string_value": "off"}
    assert "its CUDA graphs could not be captured (This session cannot use the graph capture" in caplog.text
    assert opened[-1].provider_options == {} and not opened[-1].cuda_graphs  # reopened without the option


def test_instances_asked_on_several_gpus_or_on_the_cpu_beside_a_gpu_are_said_to_share_one_device(caplog):
    with caplog.at_level(logging.WARNING, logger="serving.execution.placement"):
        placement.plan(config("instance_group { kind: KIND_GPU count: 2 gpus: [0, 1] }"), WITH_CUDA)
        placement.plan(config("instance_group [{ kind: KIND_GPU }, { kind: KIND_CPU }]"), WITH_CUDA)
        placement.plan(config("instance_group { kind: KIND_GPU count: 2 gpus: 1 }"), WITH_CUDA)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "model m: its instance_group asks for instances on gpus [0, 1]; the embedded backend runs all 2 "
        "instances on cuda:0 (serve it with --backend triton to spread them)",
        "model m: its instance_group asks for a KIND_CPU group beside a GPU one; the embedded backend runs "
        "all 2 instances on cuda:0 (serve it with --backend triton to spread them)",
    ]
