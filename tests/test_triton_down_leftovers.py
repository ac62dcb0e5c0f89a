"""The gateway translating over Triton (``--backend triton --triton-translate scheduler``) while Triton is
down: never reached (a port nobody serves), or hung (SIGSTOP). Its translator is not ready then, the
repository index asks every model at once, the statistics of every model are a 503, a failed batch
is one log line, and a translator pool that fails to stop still lets the backend stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.errors import DeadlineExceeded, ServingError, Unavailable
from serving.execution.triton import TritonBackend
from serving.gateway import Gateway
from serving.protocol import repository_index as index_module
from serving.protocol.repository_index import repository_index
from serving.triton import TritonServer
from tests.test_scheduler import LONG, SPEC, FakeDecoder, fake_encoder
from tests.test_translate_serving import exported_translators
from tests.test_translate_triton import triton_serving
from tests.waiting import eventually, until

NAME = "transformer"
PROBE_S = 0.5  # the backend's probe timeout: what a hung Triton costs each probe


@pytest.fixture(scope="module")
def exported(exported_translator_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_translators(exported_translator_models, tmp_path_factory, "triton-down", (NAME,))


@pytest.fixture(scope="module")
def triton(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    yield from triton_serving(exported, tmp_path_factory)


@contextlib.contextmanager
def hung(server: TritonServer) -> Iterator[None]:
    """Triton stopped (SIGSTOP): its ports accept, nothing answers; it continues whatever the test did.
    Entered once every thread of it has stopped: kill() returns before they have (one is woken to stop
    them all), and on a loaded machine one woken by a request first still answered it (a translator
    of a "hung" Triton read ready)."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        assert eventually(lambda: all_threads_stopped(server.process.pid)), "Triton did not stop"
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def all_threads_stopped(pid: int) -> bool:
    """Whether no thread of process ``pid`` runs user code any more: each is stopped, or has ended."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            states.append(stat.read_text().rpartition(")")[2].split()[0])
    return bool(states) and all(state in "TtZX" for state in states)


class CountingBackend(TritonBackend):
    """The triton backend, counting its ``model_ready`` calls in flight at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = self.peak = 0

    async def model_ready(self, name: str, version: str = "") -> bool:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super().model_ready(name, version)
        finally:
            self.in_flight -= 1


@contextlib.contextmanager
def gateway(repository: Path, url: str) -> Iterator[tuple[Any, CountingBackend]]:
    """A TestClient of the gateway decoding over the Triton at ``url``, and its backend."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.execution.repository import Repository
    from serving.settings import Settings

    settings = Settings(
        model_repository=repository,
        backend="triton",
        triton_url=url,
        grpc_port=0,
        triton_translate="scheduler",
    )
    backend = CountingBackend(
        url, repository=Repository(repository), translate="scheduler", probe_timeout_s=PROBE_S
    )
    with TestClient(create_app(settings, backend=backend)) as client:
        yield client, backend


def _v1_ready(client: Any) -> dict[str, bool]:
    return {m["name"]: m["ready"] for m in client.get("/v1/models").json()}


# -- readiness of a translator ---------------------------------------------------------------------


def test_a_translator_over_a_hung_triton_is_not_ready_and_is_again_once_triton_answers(
    triton: TritonServer, exported: Path
) -> None:
    with gateway(exported, triton.grpc_url) as (client, _):
        assert client.get(f"/v2/models/{NAME}/ready").status_code == 200
        assert _v1_ready(client)[NAME] is True
        with hung(triton):
            assert client.get(f"/v2/models/{NAME}/ready").status_code == 400  # was a 200
            assert _v1_ready(client)[NAME] is False
        assert eventually(lambda: client.get(f"/v2/models/{NAME}/ready").status_code == 200)


def test_a_translator_over_a_triton_never_reached_is_not_ready(exported: Path, nowhere: str) -> None:
    with gateway(exported, nowhere) as (client, _):
        assert client.get(f"/v2/models/{NAME}/ready").status_code == 400  # was a 200
        assert _v1_ready(client)[NAME] is False
        refused = client.post(f"/v1/models/{NAME}/translate", json={"texts": ["forty-two"]})
        assert refused.status_code == 503 and "Retry-After" in refused.headers


# -- the repository index ---------------------------------------------------------------------------


def test_the_repository_index_over_a_hung_triton_asks_every_model_at_once(
    triton: TritonServer, exported: Path
) -> None:
    """One probe timeout for the whole index, not one a model: the translator asks its two entries
    and the index the same two as models of their own, all four in flight together."""
    with gateway(exported, triton.grpc_url) as (client, backend):
        with hung(triton):
            index = client.post("/v2/repository/index")
        assert index.status_code == 200
        states = {(m["name"], m["state"]) for m in index.json()}
        models = (NAME, f"{NAME}_decoder", f"{NAME}_encoder")
        assert states == {(name, "UNAVAILABLE") for name in models}
        assert backend.peak == 4  # one after another: 2 (the translator's two entries)


class _SlowToAnswer:
    """A backend whose ``model_ready`` answers only once ``at_once`` calls are in flight together."""

    def __init__(self, names: list[str], at_once: int) -> None:
        self.names, self.at_once = names, at_once
        self.in_flight = self.peak = 0
        self.all_in = asyncio.Event()

    def list_models(self) -> list[str]:
        return self.names

    def metadata(self, name: str, version: str = "") -> Any:
        if name == "lost":
            raise Unavailable("its model list has not been fetched yet")
        return SimpleNamespace(versions=["1"])

    def load_error(self, name: str) -> str:
        return ""

    async def model_ready(self, name: str, version: str = "") -> bool:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.at_once:
            self.all_in.set()
        try:
            await asyncio.wait_for(self.all_in.wait(), 10)  # never set: the calls ran one by one
            return name.startswith("ready")
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("models", [3, 40])
def test_the_index_asks_its_models_together_bounded_and_keeps_their_order(models: int) -> None:
    names = [f"ready{i:02d}" if i % 2 else f"down{i:02d}" for i in range(models)] + ["lost"]
    backend = _SlowToAnswer(names, min(models, index_module.READY_PROBES))
    found = asyncio.run(repository_index(backend))
    assert backend.peak == min(models, index_module.READY_PROBES)
    assert [m["name"] for m in found] == sorted(names)
    assert {m["name"]: m["state"] for m in found} == {
        name: "READY" if name.startswith("ready") else "UNAVAILABLE" for name in names
    }
    assert (
        next(m for m in found if m["name"] == "lost")["reason"] == "its model list has not been fetched yet"
    )
    ready = asyncio.run(repository_index(_SlowToAnswer(names, min(models, index_module.READY_PROBES)), True))
    assert [m["name"] for m in ready] == sorted(n for n in names if n.startswith("ready"))


def test_the_v1_model_list_asks_its_models_readiness_together_and_lists_a_failed_entry_not_ready() -> None:
    """``GET /v1/models`` asked each model after the other: over a hung Triton, N probe timeouts."""
    from serving.protocol.v1 import list_models

    names = [f"ready{i:02d}" if i % 2 else f"down{i:02d}" for i in range(20)]
    backend = _SlowToAnswer(names, index_module.READY_PROBES)
    entry = SimpleNamespace(inputs=list, labels={}, task="classify", versions=["1"])
    repository = SimpleNamespace(
        names=lambda: [*names, "failed"], entries={name: entry for name in names}
    )  # "failed": listed, its load failed
    listed = asyncio.run(list_models(backend, repository))  # type: ignore[arg-type]
    assert backend.peak == index_module.READY_PROBES
    assert [(m.name, m.ready) for m in listed] == [(n, n.startswith("ready")) for n in names] + [
        ("failed", False)
    ]


# -- statistics -------------------------------------------------------------------------------------


def test_every_model_statistics_are_a_503_while_triton_was_never_reached(
    exported: Path, nowhere: str
) -> None:
    """As once Triton was reached and lost since (and as the README says): an empty 200 told a
    client that Triton served nothing. The translator the gateway decodes keeps its own figures."""
    with gateway(exported, nowhere) as (client, _):
        every = client.get("/v2/models/stats")
        assert every.status_code == 503 and "Retry-After" in every.headers, every.text  # was 200, []
        assert "not ready" in every.json()["error"]
        own = client.get(f"/v2/models/{NAME}/stats")
        assert own.status_code == 200 and own.json()["model_stats"][0]["name"] == NAME


def test_every_model_statistics_list_tritons_models_once_it_is_reached(
    triton: TritonServer, exported: Path
) -> None:
    with gateway(exported, triton.grpc_url) as (client, _):
        every = client.get("/v2/models/stats")
    assert every.status_code == 200, every.text
    assert {s["name"] for s in every.json()["model_stats"]} == {NAME, f"{NAME}_encoder", f"{NAME}_decoder"}


# -- logging of failed batches -----------------------------------------------------------------------


def _scheduler_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "serving.decoding.scheduler"]


def test_a_translate_request_over_an_unreachable_triton_logs_one_warning_line_without_a_traceback(
    exported: Path, nowhere: str, caplog: pytest.LogCaptureFixture
) -> None:
    with gateway(exported, nowhere) as (client, _), caplog.at_level(logging.WARNING):
        for _ in range(2):
            refused = client.post(f"/v1/models/{NAME}/translate", json={"texts": ["forty-two"]})
            assert refused.status_code == 503, refused.text
    records = _scheduler_records(caplog)
    # one line an outage: the second failed batch's, the same line, goes to debug (a warning a batch
    # flooded the log while Triton restarted)
    assert [r.levelno for r in records] == [logging.WARNING]
    assert all(r.exc_info is None for r in records)  # was a traceback each, at ERROR
    assert all("encoder failed: Unavailable: Triton at" in r.getMessage() for r in records)


@pytest.mark.parametrize(
    ("error", "level", "traceback"),
    [
        (DeadlineExceeded("Triton: Deadline Exceeded"), logging.WARNING, False),
        (RuntimeError("a bug in the decoder"), logging.ERROR, True),
    ],
)
def test_a_failed_decoder_step_logs_a_server_that_cannot_serve_now_in_one_line_and_a_bug_with_its_traceback(
    error: Exception, level: int, traceback: bool, caplog: pytest.LogCaptureFixture
) -> None:
    decoder = FakeDecoder()
    original = decoder.__call__

    def failing(inputs: dict) -> dict:
        if decoder.calls:  # the first step runs, the second fails
            raise error
        return original(inputs)

    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, failing, SchedulerConfig(timeout_s=30))

    async def body() -> None:
        await scheduler.start()
        try:
            with pytest.raises(ServingError):
                await scheduler.submit([[5, 6, 7]], LONG)  # ten steps: the second fails
            await until(lambda: bool(_scheduler_records(caplog)))
        finally:
            await scheduler.stop(grace_s=1.0)

    with caplog.at_level(logging.WARNING):
        asyncio.run(body())
    (record,) = _scheduler_records(caplog)
    assert record.levelno == level and "decoding failed" in record.getMessage()
    assert (record.exc_info is not None) == traceback


# -- stopping ---------------------------------------------------------------------------------------


class _Backend:
    runs_translators_in_gateway = False

    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


class _PoolThatFailsToStop:
    async def stop(self, grace_s: float) -> None:
        raise RuntimeError("translator t: stuck")


def test_a_translator_pool_whose_stop_raises_still_stops_the_backend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = _Backend()
    gateway_ = Gateway(backend, None)
    gateway_.translators = _PoolThatFailsToStop()
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="translator t: stuck"):
        asyncio.run(gateway_.stop())
    assert backend.stopped  # was skipped: its sessions and connections left open
    assert "stopping the translators failed (translator t: stuck); stopping the rest" in caplog.text


def test_a_translator_whose_step_probe_fails_is_not_ready_rather_than_a_500() -> None:
    """A step entry's readiness probe that raised (a backend error other than unreachable or late)
    failed the whole readiness route with a 500, its sibling probe left running."""
    from serving.gateway import Gateway

    asked: list[str] = []

    async def model_ready(name: str, version: str = "") -> bool:
        asked.append(name)
        if name == "t_encoder":
            raise RuntimeError("the probe broke")
        return True

    entry = SimpleNamespace(
        kiln={"translator": {"encoder": "t_encoder", "decoder": "t_decoder"}}, path=Path("t")
    )
    entry.resolve_version = lambda version: version or "1"
    gateway = Gateway.__new__(Gateway)
    gateway.backend = SimpleNamespace(model_ready=model_ready)
    gateway.repository = SimpleNamespace(get=lambda name: entry)
    gateway.translators = SimpleNamespace(get=lambda name: SimpleNamespace(stopped=lambda: ""))
    gateway._translate_names, gateway._stopping = {"t"}, False
    assert asyncio.run(gateway.model_ready("t")) is False
    assert sorted(asked) == ["t_decoder", "t_encoder"]
