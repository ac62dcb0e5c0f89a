"""The ``triton`` backend in front of a real Triton whose model set is not the one it first saw: models
Triton never loaded (``--model-control-mode explicit``), a load that failed, models loaded later, a
Triton killed and restarted on the same port with other models, and one draining after a SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.errors import ModelNotFound, ServingError, Unavailable
from serving.execution.base import InferRequest
from serving.execution.triton import TritonBackend
from serving.protocol.repository_index import repository_index
from serving.triton import TritonServer, find_triton
from serving.triton.ports import held_port
from tests.test_grpc import LoopThread
from tests.waiting import eventually

pytestmark = pytest.mark.triton
needs_triton = pytest.mark.skipif(
    find_triton() is None, reason="the tritonserver binary from nvidia-pytriton is not installed"
)

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 4
input [{{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }}]
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""
DOUBLE = """import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        x = lambda r: pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", 2 * x(r))]) for r in requests]
"""
BROKEN = """class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("this model fails to load on purpose")
"""
SLOW = """import os
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        open({marker!r}, "w").close()  # the test knows it is running
        deadline = time.monotonic() + 60
        while not os.path.exists({release!r}) and time.monotonic() < deadline:  # until the test is done
            time.sleep(0.01)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())]) for r in requests]
"""
X = np.array([[1.0, 2.0]], np.float32)


def write_model(root: Path, name: str, source: str = DOUBLE) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    (root / name / "config.pbtxt").write_text(CONFIG.format(name=name))
    (root / name / "1" / "model.py").write_text(source)


def repository(root: Path, models: dict[str, str]) -> Path:
    for name, source in models.items():
        write_model(root, name, source)
    return root


class ExplicitTriton(TritonServer):
    """Triton loading only ``double`` of its repository (``--model-control-mode explicit``), as
    deployments that load models on demand run it."""

    def command(self, *args: object) -> list[str]:
        kept = [flag for flag in super().command(*args) if not flag.startswith("--model-control-mode")]
        return [*kept, "--model-control-mode=explicit", "--load-model=double"]


class PatientTriton(TritonServer):
    """Triton waiting up to a minute for its requests in flight once told to stop (the launcher's 5 s
    could end the drain under a test on a loaded machine before it had looked)."""

    def command(self, *args: object) -> list[str]:
        kept = [flag for flag in super().command(*args) if not flag.startswith("--exit-timeout-secs")]
        return [*kept, "--exit-timeout-secs=60"]


class TritonOnAHeldPort(TritonServer):
    """Triton binding its gRPC port with SO_REUSEPORT, beside a socket the test holds on it."""

    def command(self, *args: object) -> list[str]:
        return [*super().command(*args), "--reuse-grpc-port=true"]


@contextlib.contextmanager
def explicit_triton(
    tmp_path_factory: pytest.TempPathFactory, name: str, models: dict[str, str]
) -> Iterator[TritonServer]:
    """A Triton in explicit model-control mode over a repository of ``models`` (skipped where the
    tritonserver binary is not installed)."""
    if find_triton() is None:
        pytest.skip("the tritonserver binary from nvidia-pytriton is not installed")
    root = repository(tmp_path_factory.mktemp(name) / "repo", models)
    with ExplicitTriton(root, tmp_path_factory.mktemp(f"{name}-triton")) as server:
        yield server


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    models = {"double": DOUBLE, "idle": DOUBLE, "later": DOUBLE, "broken": BROKEN}
    with explicit_triton(tmp_path_factory, "explicit", models) as server:
        yield server


@pytest.fixture
def backend(explicit: TritonServer, loop: LoopThread) -> Iterator[TritonBackend]:
    backend = TritonBackend(explicit.grpc_url, timeout_s=30)
    loop.run(backend.start())
    yield backend
    loop.run(backend.stop())


def doubled(loop: LoopThread, backend: TritonBackend, model: str) -> list[list[float]]:
    return loop.run(backend.infer(InferRequest(model=model, inputs={"x": X}))).outputs["y"].tolist()


class _Index:
    """A Triton HTTP client answering the model list calls from ``index`` (which a test may change)."""

    def __init__(self, index: list[dict]) -> None:
        self.index = index

    async def get_model_repository_index(self) -> list[dict]:
        return list(self.index)

    async def get_model_metadata(self, name: str) -> dict:
        tensor = lambda n: {"name": n, "datatype": "FP32", "shape": [-1, 2]}  # noqa: E731
        return {
            "name": name,
            "versions": ["1"],
            "platform": "python",
            "inputs": [tensor("x")],
            "outputs": [tensor("y")],
        }

    async def get_model_config(self, name: str) -> dict:
        return {"name": name, "max_batch_size": 4}


def test_the_model_list_reads_unloaded_and_failed_entries_and_catches_up_with_a_model_loaded_since(
    loop: LoopThread,
) -> None:
    """No Triton needed: an index entry without a state (never loaded) or with UNAVAILABLE is a model
    Triton does not serve, named with its reason; one that became READY is found without any probe."""
    fake = _Index(
        [
            {"name": "double", "version": "1", "state": "READY"},
            {"name": "idle"},
            {"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": "load failed: oops"},
        ]
    )
    backend = TritonBackend("127.0.0.1:1", protocol="http", resync_interval_s=0)
    backend._client = fake
    loop.run(backend.start())
    try:
        assert backend.list_models() == ["broken", "double", "idle"]
        assert backend.metadata("double").versions == ["1"]
        assert backend.load_error("broken") == "UNAVAILABLE: load failed: oops"
        with pytest.raises(ModelNotFound, match="'idle' is not available on Triton: not loaded"):
            backend.config("idle")
        fake.index[1] = {"name": "idle", "version": "1", "state": "READY"}  # loaded meanwhile

        async def described() -> bool:  # on the loop, as the routes ask
            try:
                return backend.metadata("idle").name == "idle"
            except ModelNotFound:
                return False

        assert eventually(lambda: loop.run(described()))
        assert backend.load_error("idle") == ""
    finally:
        loop.run(backend.stop())


class _Flaky(_Index):
    """An index whose calls fail while ``failing`` holds: a metadata fetch racing an unload (404), or
    the index call itself timing out; it counts each model's metadata fetches."""

    def __init__(self, index: list[dict]) -> None:
        super().__init__(index)
        self.failing: set[str] = set()
        self.fetched: list[str] = []

    async def is_server_ready(self) -> bool:
        return True

    async def get_model_repository_index(self) -> list[dict]:
        if "index" in self.failing:
            raise InferenceServerException("index timed out", status="400")
        return await super().get_model_repository_index()

    async def get_model_metadata(self, name: str) -> dict:
        self.fetched.append(name)
        if name in self.failing:
            raise InferenceServerException(f"Request for unknown model: '{name}' is not found", status="404")
        return await super().get_model_metadata(name)


def test_a_model_whose_fetch_failed_is_fetched_again_only_changed_models_are_and_a_failed_index_keeps_readiness(
    loop: LoopThread,
) -> None:
    """A model the index listed READY but whose metadata fetch met its unload stayed a 404 until the
    index changed (its entry was remembered as fetched); an index change refetched every model; and a
    probe that could not read the index made a ready Triton's gateway unready."""
    fake = _Flaky(
        [{"name": "a", "version": "1", "state": "READY"}, {"name": "b", "version": "1", "state": "READY"}]
    )
    fake.failing.add("b")
    backend = TritonBackend("127.0.0.1:1", protocol="http", resync_interval_s=0)
    backend._client = fake
    loop.run(backend.start())
    try:
        with pytest.raises(ModelNotFound):
            backend.metadata("b")
        fake.failing.clear()
        assert loop.run(backend.is_ready())  # the same index: b is asked for again
        assert backend.metadata("b").name == "b" and backend.list_models() == ["a", "b"]
        fake.fetched.clear()
        fake.index.append({"name": "c", "version": "1", "state": "READY"})
        assert loop.run(backend.is_ready())
        assert fake.fetched == ["c"]  # a and b unchanged: kept
        fake.index[0] = {"name": "a", "version": "2", "state": "READY"}  # a reloaded as another version
        assert loop.run(backend.is_ready())
        assert fake.fetched == ["c", "a"]
        fake.failing.add("index")
        assert loop.run(backend.is_ready())  # Triton answers ready; its list stands
        assert backend.list_models() == ["a", "b", "c"]
    finally:
        loop.run(backend.stop())


@needs_triton
def test_models_triton_did_not_load_leave_the_gateway_ready_and_are_named_not_loaded(backend, loop) -> None:
    """Triton's index lists a model it never loaded without a state; taken for READY, its metadata
    fetch failed the whole model list: the gateway stayed unready and answered every request 503."""
    assert loop.run(backend.is_ready())
    assert doubled(loop, backend, "double") == [[2.0, 4.0]]
    assert {"double", "idle"} <= set(backend.list_models())  # every model Triton's index lists
    with pytest.raises(ModelNotFound, match="'idle' is not available on Triton: not loaded"):
        backend.metadata("idle")
    assert backend.unready_reason("idle") == "not loaded" and backend.unready_reason("double") == ""
    assert backend.load_error("idle") == backend.load_error("double") == ""  # never loaded: no failure
    index = {entry["name"]: entry["state"] for entry in loop.run(repository_index(backend))}
    assert (index["double"], index["idle"]) == ("READY", "UNAVAILABLE")


@needs_triton
def test_a_model_loaded_after_the_gateway_started_is_served_once_triton_says_it_is_ready(
    explicit, backend, loop
) -> None:
    with httpclient.InferenceServerClient(explicit.http_url) as triton:
        triton.load_model("later")
        try:
            assert loop.run(backend.model_ready("later"))  # what a client asks after loading
            assert [t.name for t in backend.metadata("later").inputs] == ["x"]
            assert doubled(loop, backend, "later") == [[2.0, 4.0]]
        finally:
            triton.unload_model("later")


@needs_triton
def test_a_failed_load_is_refused_with_tritons_reason_not_as_an_unknown_model(
    explicit, backend, loop
) -> None:
    with (
        httpclient.InferenceServerClient(explicit.http_url) as triton,
        pytest.raises(InferenceServerException, match="fails to load on purpose"),
    ):
        triton.load_model("broken")
    assert not loop.run(backend.model_ready("broken"))

    def refused_with_the_reason() -> bool:  # the model list is checked again at most once a second
        with pytest.raises(ModelNotFound, match="'broken' is not available on Triton") as refused:
            doubled(loop, backend, "broken")
        return "fails to load on purpose" in refused.value.message

    assert eventually(refused_with_the_reason)
    assert "fails to load on purpose" in backend.load_error("broken")


@needs_triton
def test_a_triton_killed_and_restarted_with_other_models_is_served_as_it_now_is(loop, tmp_path: Path) -> None:
    """The model list was fetched once: a Triton restarted on the same port with another model set
    kept being answered with the first list (a 404 naming the old models for a model it served)."""
    root = repository(tmp_path / "repo", {"double": DOUBLE})
    with held_port(reuse_port=True) as hold:
        port = hold.getsockname()[1]
        backend = TritonBackend(f"127.0.0.1:{port}", timeout_s=30)
        try:
            with TritonOnAHeldPort(root, tmp_path / "first", grpc_port=port) as first:
                loop.run(backend.start())
                assert doubled(loop, backend, "double") == [[2.0, 4.0]]
                os.killpg(first.process.pid, signal.SIGKILL)
                first.process.wait(30)
                with pytest.raises(Unavailable):  # a request finds it gone
                    doubled(loop, backend, "double")
            write_model(root, "later")
            with TritonOnAHeldPort(root, tmp_path / "second", grpc_port=port):
                # a readiness probe (a load balancer's) finds the new list, whether or not the failed
                # request saw the link lost (then the watcher had fetched it already)
                assert eventually(lambda: loop.run(backend.is_ready()) and "later" in backend.list_models())
                assert doubled(loop, backend, "later") == [[2.0, 4.0]]
                assert loop.run(backend.is_ready())
        finally:
            loop.run(backend.stop())


class _Repository:
    """The repository entries a runner reads its tensor names from: ``x`` in, ``y`` out."""

    def get(self, name: str) -> SimpleNamespace:
        tensors = lambda n: lambda: [SimpleNamespace(name=n)]  # noqa: E731
        return SimpleNamespace(inputs=tensors("x"), outputs=tensors("y"))


def refusals_until(call, last) -> list[ServingError]:  # noqa: ANN001
    """The errors ``call()`` ends with, retried until one is ``last(error)`` (answers are retried too)."""
    refusals: list[ServingError] = []

    def done() -> bool:
        try:
            call()
        except ServingError as error:
            refusals.append(error)
        return bool(refusals) and last(refusals[-1])

    assert eventually(done), [r.message for r in refusals]
    return refusals


@needs_triton
def test_a_triton_draining_after_sigterm_is_a_503_not_a_404_for_the_models_it_unloaded(
    loop, tmp_path: Path
) -> None:
    """Triton unloads its models as soon as it is told to stop and answers NOT_FOUND ("has no available
    versions") until its requests in flight end: a rolling restart told clients the model does not
    exist (404), and the scheduler's encoder and decoder calls a 500."""
    marker, release = tmp_path / "running", tmp_path / "release"
    slow = SLOW.format(marker=str(marker), release=str(release))
    root = repository(tmp_path / "repo", {"double": DOUBLE, "slow": slow})
    with PatientTriton(root, tmp_path / "triton") as server:
        backend = TritonBackend(server.grpc_url, timeout_s=30, repository=_Repository())
        loop.run(backend.start())
        run = backend.runner("double")
        try:
            assert run({"x": X})["y"].tolist() == [[2.0, 4.0]]
            draining = asyncio.run_coroutine_threadsafe(
                backend.infer(InferRequest(model="slow", inputs={"x": X})), loop.loop
            )
            assert eventually(marker.exists)  # in flight: Triton waits for it before it exits
            server.process.send_signal(signal.SIGTERM)
            # until its model is unloaded, Triton may refuse with its scheduler stopping (UNAVAILABLE);
            # then NOT_FOUND, "no available versions": every refusal a 503 asking to retry
            refusals = refusals_until(
                lambda: doubled(loop, backend, "double"), lambda e: "no available versions" in e.message
            )
            assert all(isinstance(r, Unavailable) and r.retry_after == 1.0 for r in refusals), [
                r.message for r in refusals
            ]
            with pytest.raises(Unavailable, match="not ready"):
                run({"x": X})
            release.touch()  # the request in flight ends now, and Triton with it
            assert draining.result(30).outputs["y"].tolist() == [[1.0, 2.0]]  # admitted: answered
        finally:
            release.touch()
            loop.run(backend.stop())
