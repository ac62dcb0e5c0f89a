"""A client that leaves stops its translation on the ASGI path too (chunked bodies, which the HTTP/1
protocol's lean path does not take whole): REST translate and KServe v2 infer."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from serving.app import create_app
from serving.protocol.lean import WATCHED_BY_PROTOCOL
from serving.protocol.translate import until_client_leaves
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, held_grpc_port
from tests.test_translate_serving import exported_translators, texts_of_mixed_lengths
from tests.waiting import eventually

NAME = "transformer"
TEXTS = texts_of_mixed_lengths(64, seed=31)
REST = {"texts": TEXTS, "beam_size": 16, "max_length": 60}
KSERVE = {
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS), 1], "data": TEXTS}],
    "parameters": {"beam_size": 16, "max_length": 60},
}
ROUTES = {"rest": (f"/v1/models/{NAME}/translate", REST), "kserve": (f"/v2/models/{NAME}/infer", KSERVE)}


@pytest.fixture(scope="module")
def gateway(exported_translator_models, tmp_path_factory) -> Iterator[LiveServer]:
    repository = exported_translators(exported_translator_models, tmp_path_factory, "disconnect", (NAME,))
    with held_grpc_port() as grpc_port:
        settings = Settings(
            model_repository=repository, grpc_port=grpc_port, reuse_port=True, request_timeout_s=120.0
        )
        app = create_app(settings)
        with LiveServer(app) as server:
            server.app_state = app.state
            yield server


def _chunked(path: str, body: dict) -> bytes:
    """A request whose body is chunked: the HTTP/1 protocol passes it to the app as ASGI."""
    raw = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    return head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(raw), raw)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_client_that_hangs_up_mid_chunked_translation_stops_its_decode(gateway, route) -> None:
    metrics = gateway.app_state.metrics

    def steps() -> float:
        return metrics.sample("kiln_decoder_steps_total", model=NAME) or 0.0

    path, body = ROUTES[route]
    first = steps()
    assert httpx.post(f"http://{gateway.url}{path}", json=body, timeout=120).status_code == 200
    whole = steps() - first  # the steps the request takes when answered
    start = steps()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(_chunked(path, body))
        assert eventually(lambda: steps() > start)  # decoding, then gone
    assert eventually(lambda: (metrics.sample("kiln_in_flight_requests", model=NAME) or 0.0) == 0)
    stopped = steps() - start
    assert stopped < whole / 2, (stopped, whole)  # its rows left within a compiled call or so
    reply = httpx.post(f"http://{gateway.url}/v1/models/{NAME}/translate", json={"texts": ["twelve"]})
    assert reply.status_code == 200  # serving on


def test_a_chunked_translation_whose_client_stays_is_answered_as_a_sized_one(gateway) -> None:
    body = {"texts": TEXTS[:4], "beam_size": 2, "max_length": 12}
    sized = httpx.post(f"http://{gateway.url}/v1/models/{NAME}/translate", json=body, timeout=60)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(_chunked(f"/v1/models/{NAME}/translate", body))
        reply = b""
        while not reply.endswith(b"}]}"):  # the answer's JSON ends the translations list
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    head, _, content = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(content) == sized.json()


class _Request:
    """What until_client_leaves reads of a request: its scope and its ASGI receive."""

    def __init__(self, receive, scope: dict | None = None) -> None:
        self.receive, self.scope = receive, scope or {}


def test_a_request_its_protocol_watches_is_not_watched_again_and_the_work_runs_in_the_callers_task() -> None:
    async def never_called() -> dict:
        raise AssertionError("the protocol's own request must not be watched")

    async def scenario() -> bool:
        caller = asyncio.current_task()

        async def work() -> bool:
            return asyncio.current_task() is caller

        return await until_client_leaves(_Request(never_called, {WATCHED_BY_PROTOCOL: True}), work())

    assert asyncio.run(scenario()) is True


def test_the_work_is_cancelled_when_the_receive_reports_the_client_gone_and_answered_when_not() -> None:
    async def scenario() -> tuple[object, bool, object]:
        gone = asyncio.Event()

        async def receive() -> dict:
            await gone.wait()
            return {"type": "http.disconnect"}

        started, cancelled = asyncio.Event(), []

        async def endless() -> str:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return "never"

        async def quick() -> str:
            return "answer"

        answered = await until_client_leaves(_Request(receive), quick())
        left = asyncio.ensure_future(until_client_leaves(_Request(receive), endless()))
        await started.wait()
        gone.set()
        result = await left
        return answered, bool(cancelled), result

    assert asyncio.run(scenario()) == ("answer", True, None)
