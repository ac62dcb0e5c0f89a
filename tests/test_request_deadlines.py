"""Whose deadline ends a request: the server's ``--request-timeout-s`` is a ceiling a client's own timeout
(KServe ``timeout`` parameter) or gRPC deadline may only shorten, and only the ``timeout`` parameter may
shorten a model's queue timeout (Triton's ``allow_timeout_override``), never the server's default."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.errors import DeadlineExceeded, Unavailable
from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from tests.test_execution_errors import EMBEDDING_CONFIG, embedding_repository
from tests.waiting import DEADLINE_S, until

HOUR_S = 3600.0
TOKENS = {"tokens": np.array([[1, 2]])}
# the entry's queue may hold a request a minute, and a request's own timeout may shorten that
QUEUE_POLICY = EMBEDDING_CONFIG.replace(
    "dynamic_batching { }",
    "dynamic_batching { default_queue_policy { default_timeout_microseconds: 60000000 "
    "allow_timeout_override: true } }",
)


class Gate:
    """Sessions whose runs wait until ``release`` is set; ``entered`` tells that a batch is running."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def factory(self, path: str, sess_options: Any = None, providers: Any = None) -> Any:
        import onnxruntime as ort

        gate, session = self, ort.InferenceSession(path, sess_options=sess_options, providers=providers)

        class Gated:
            def __getattr__(self, name: str) -> Any:
                return getattr(session, name)

            def run(self, names: Any, feeds: Any) -> Any:
                gate.entered.set()
                gate.release.wait(DEADLINE_S)
                return session.run(names, feeds)

        return Gated()


async def ended_by(root: Path, server_s: float, queued: InferRequest) -> type[Exception]:
    """How ``queued`` ends on a backend whose limit is ``server_s``, sent while the entry's only instance
    is busy with another request: DeadlineExceeded (504) or Unavailable (503, its queue timeout)."""
    gate = Gate()
    options = OrtOptions(default_timeout_s=server_s, lone_request_threads=0)
    backend = OnnxRuntimeBackend(Repository(root), options, session_factory=gate.factory)
    await backend.start()
    try:
        running = asyncio.create_task(backend.infer(InferRequest("embed", TOKENS, timeout_s=HOUR_S)))
        await until(gate.entered.is_set)
        with pytest.raises((DeadlineExceeded, Unavailable)) as info:
            await asyncio.wait_for(backend.infer(queued), DEADLINE_S)
        gate.release.set()
        await asyncio.gather(running, return_exceptions=True)
        return info.type
    finally:
        gate.release.set()
        await backend.stop()


@pytest.mark.parametrize("given", ["timeout_s", "deadline_s"])
def test_a_client_timeout_longer_than_the_servers_limit_does_not_extend_it(tmp_path, given):
    queued = InferRequest("embed", TOKENS, **{given: HOUR_S})
    assert asyncio.run(ended_by(embedding_repository(tmp_path), 0.05, queued)) is DeadlineExceeded


@pytest.mark.parametrize("given", ["timeout_s", "deadline_s"])
def test_a_client_timeout_shorter_than_the_servers_limit_ends_the_request_sooner(tmp_path, given):
    queued = InferRequest("embed", TOKENS, **{given: 0.05})
    assert asyncio.run(ended_by(embedding_repository(tmp_path), HOUR_S, queued)) is DeadlineExceeded


def test_the_servers_default_deadline_is_never_taken_for_the_requests_own_timeout(tmp_path):
    """With ``allow_timeout_override``, a request that gave no ``timeout`` waits in the queue the config's
    minute, and ends at the server's deadline (504), not at a queue timeout the server's deadline made."""
    root = embedding_repository(tmp_path)
    (root / "embed" / "config.pbtxt").write_text(QUEUE_POLICY)
    assert asyncio.run(ended_by(root, 0.05, InferRequest("embed", TOKENS))) is DeadlineExceeded
    gave_one = InferRequest("embed", TOKENS, timeout_s=0.05)  # its own timeout shortens the queue's
    assert asyncio.run(ended_by(root, HOUR_S, gave_one)) is Unavailable
    grpc_deadline = InferRequest("embed", TOKENS, deadline_s=0.05)  # a deadline, not a timeout parameter
    assert asyncio.run(ended_by(root, HOUR_S, grpc_deadline)) is DeadlineExceeded


@pytest.mark.parametrize(
    ("server_s", "timeout_s", "deadline_s", "limit"),
    [
        (30.0, None, None, 30.0),
        (30.0, 60.0, None, 30.0),
        (30.0, None, 60.0, 30.0),
        (30.0, 5.0, 60.0, 5.0),
        (30.0, 60.0, 2.0, 2.0),
        (None, 7.0, None, 7.0),
        (None, None, None, None),
    ],
)
def test_a_requests_time_limit_is_the_servers_shortened_never_lengthened(
    server_s, timeout_s, deadline_s, limit
):
    request = InferRequest("m", {}, timeout_s=timeout_s, deadline_s=deadline_s)
    assert request.time_limit(server_s) == limit


def test_the_friendly_classify_route_sends_no_timeout_of_its_own(tmp_path):
    """It set the server's --request-timeout-s as the request's ``timeout_s``, which is the client's own
    KServe ``timeout``: on a model allowing the override it shortened the queue timeout (60 s here) to
    the server's 30 s. The backend applies the server's limit itself."""
    from starlette.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings
    from tests.repo_fixtures import build_classifier_repository
    from tests.test_gateway_rest import b64, png

    root = build_classifier_repository(tmp_path / "repo")
    backend = OnnxRuntimeBackend(Repository(root))
    seen: list[InferRequest] = []
    infer = backend.infer

    async def recording(request: InferRequest) -> Any:
        seen.append(request)
        return await infer(request)

    backend.infer = recording  # type: ignore[method-assign]
    app = create_app(Settings(model_repository=root, grpc_port=0), backend=backend)
    with TestClient(app) as client:
        answer = client.post("/v1/models/lenet/classify", json={"images": [b64(png(1))]})
    assert answer.status_code == 200, answer.text
    assert seen and all(r.timeout_s is None for r in seen)
