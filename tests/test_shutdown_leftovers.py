"""What a stop that cuts work in flight says and how the gateway exits: a second Ctrl-C (uvicorn's forced
quit), a shutdown grace that runs out, over HTTP and gRPC; real ``python -m serving`` processes for the
signals, the gRPC server's stop in process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import grpc
import hpack
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import start_grpc_server
from tests.h2_client import RawClient, call_headers, doubling_request, grpc_message
from tests.repo_fixtures import build_classifier_repository
from tests.test_gateway_lifecycle import _finish, _gateway, _request_in_flight
from tests.test_grpc import FakeBackend
from tests.waiting import eventually

CUT_HTTP_TASK = "Cancel 1 running task(s)"  # uvicorn's line when the grace cuts a request


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("leftovers") / "repo")


def _call_in_flight(proc: subprocess.Popen) -> RawClient:
    """A ModelInfer call on the gateway's gRPC port whose message is only partly sent: in flight until
    the connection closes (the gateway waits ``--read-timeout-s`` for the rest). The server reads a
    connection's frames in order: once it answers the PING sent after them, it holds the call."""
    client = RawClient(int(proc.args[proc.args.index("--grpc-port") + 1]))
    message = grpc_message(service_pb2.ModelInferRequest(model_name="lenet", id="x" * 64).SerializeToString())
    head = w.frame(w.HEADERS, w.END_HEADERS, 1, hpack.Encoder().encode(call_headers()))
    ping = w.frame(w.PING, 0, 0, b"in-fligh")
    client.send(w.PREFACE, w.settings_frame({}), head, w.frame(w.DATA, 0, 1, message[:20]), ping)
    while (frame := client.until(w.PING)) is not None and not frame[1] & w.ACK:
        pass
    assert frame is not None, "the gateway closed the gRPC connection"
    return client


def _logged(log: Path, line: str) -> bool:
    return line in log.read_text()


@pytest.mark.parametrize(
    "held, stage",
    [
        # the second Ctrl-C during the HTTP drain: uvicorn stopped waiting, skipped the app's shutdown
        # and left the loop's end to cancel the request and the lifespan, a traceback each, exit 0
        pytest.param(("http", "grpc"), "Waiting for connections to close", id="during-the-http-drain"),
        # during the app's shutdown, waiting for a gRPC call: uvicorn ignored it, the stop waited the grace
        pytest.param(("grpc",), "Waiting for application shutdown.", id="while-grpc-calls-drain"),
    ],
)
def test_a_second_ctrl_c_cuts_the_work_in_flight_at_once_in_one_line_and_exits_one(
    repository, tmp_path, held, stage
):
    log = tmp_path / "gateway.log"
    flags = ("--shutdown-grace-s", "120", "--read-timeout-s", "120")
    with _gateway(repository, *flags, log=log) as (proc, port):
        conn = _request_in_flight(port) if "http" in held else None
        call = _call_in_flight(proc)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C, twice
        assert eventually(lambda: _logged(log, stage)), log.read_text()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the gateway still ran 30 s after a second Ctrl-C (grace 120 s):\n{log.read_text()}")
        call.close()
        if conn is not None:
            conn.close()
    text = log.read_text()
    cut = "1 HTTP request and 1 gRPC call" if "http" in held else "1 gRPC call"
    assert f"second Ctrl-C: quitting at once, cutting {cut} in flight (exit status 1)" in text, text
    assert "Traceback" not in text and "CancelledError" not in text, text
    assert status == 1


class _Handle:
    """A gRPC server's handle as GatewayServer reads it: ``counted`` calls in flight (None: grpc.aio's,
    uncounted), ``cut`` by the grace."""

    def __init__(self, counted: int | None, cut: int | None = 0) -> None:
        self.counted, self.cut, self.stopped = counted, cut, []

    def in_flight(self) -> int | None:
        return self.counted

    @property
    def server(self) -> _Handle:
        return self

    async def stop(self, grace_s: float) -> None:
        self.stopped.append(grace_s)


def _server(handle: _Handle) -> Any:
    import types

    import uvicorn

    from serving.app import GatewayServer

    server = GatewayServer(uvicorn.Config(lambda *_: None, timeout_graceful_shutdown=0.5))
    server.config.app = types.SimpleNamespace(state=types.SimpleNamespace(grpc=handle))
    server._captured_signals = [signal.SIGTERM]
    return server


def _second_ctrl_c(server: Any, handle: _Handle, caplog: pytest.LogCaptureFixture) -> None:
    """A second Ctrl-C reaching ``server`` (its gRPC stop awaited), then the end of its stop."""
    import asyncio

    async def quit_at_once() -> None:
        server._quit_at_once()
        await server._grpc_stop

    with caplog.at_level(logging.WARNING, logger="serving.app"):
        asyncio.run(quit_at_once())
        server._tell_cut_work(handle)


@pytest.mark.parametrize(
    ("counted", "status", "said"),
    [(0, 0, "(nothing in flight)"), (None, 0, "cutting any gRPC calls (grpc.aio does not count them)")],
)
def test_a_second_ctrl_c_that_cuts_nothing_it_can_count_leaves_the_exit_status_clean(
    counted, status, said, caplog
) -> None:
    """grpc.aio does not count its calls: its unknown count made every second Ctrl-C a cut (exit 1)."""

    handle = _Handle(counted)
    server = _server(handle)
    _second_ctrl_c(server, handle, caplog)
    assert server.exit_status == status and handle.stopped == [0]
    assert server._captured_signals == [signal.SIGTERM]  # a clean stop still ends by its signal
    assert said in caplog.text and "exit status 1" not in caplog.text


def test_a_second_ctrl_c_after_a_grace_that_cut_work_keeps_exit_status_one(caplog) -> None:
    """A grace that ran out had cut 2 requests and a call; a Ctrl-C during the stop's next steps,
    with nothing left in flight, set the status back to 0 and the gateway ended by its signal."""

    handle = _Handle(0, cut=1)
    server = _server(handle)
    server.cut_requests = 2
    _second_ctrl_c(server, handle, caplog)
    assert server.exit_status == 1 and server._captured_signals == []
    assert "ran out with 2 HTTP requests and 1 gRPC call in flight; exit status 1" in caplog.text


def test_a_grace_that_runs_out_names_the_requests_and_calls_it_cut_and_exits_one(repository, tmp_path):
    """The grace cut gRPC calls without a word (HTTP's said "Cancel 1 running task(s)" and printed the
    request's CancelledError traceback), and the gateway ended by SIGTERM as after a clean drain:
    tritonserver exits 1 when its --exit-timeout-secs runs out with requests in flight; so does Kiln."""
    log = tmp_path / "gateway.log"
    flags = ("--shutdown-grace-s", "0.5", "--read-timeout-s", "120")
    with _gateway(repository, *flags, log=log) as (proc, port):
        conn, call = _request_in_flight(port), _call_in_flight(proc)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
        call.close()
        conn.close()
    text = log.read_text()
    assert status == 1, text
    assert "gRPC server stop: the shutdown grace (0.5 s) ran out with 1 call(s) in flight: cut" in text
    assert CUT_HTTP_TASK in text
    assert (
        "gateway stopped with work cut: the shutdown grace (0.5 s) ran out with 1 HTTP request and "
        "1 gRPC call in flight; exit status 1"
    ) in text
    assert "Traceback" not in text and "CancelledError" not in text, text


def test_a_drain_that_ends_within_its_grace_still_ends_by_sigterm(repository, tmp_path):
    log = tmp_path / "gateway.log"
    with _gateway(repository, "--shutdown-grace-s", "120", log=log) as (proc, port):
        conn = _request_in_flight(port)
        proc.send_signal(signal.SIGTERM)
        assert eventually(lambda: _logged(log, "Waiting for connections to close")), log.read_text()
        assert _finish(conn) == b"HTTP/1.1 200 OK"
        assert proc.wait(timeout=30) == -signal.SIGTERM, log.read_text()
    assert "work cut" not in log.read_text()


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_the_grpc_servers_stop_says_how_many_calls_its_grace_cut(loop, caplog, server):
    backend = FakeBackend()
    handle = loop.run(start_grpc_server(backend, "127.0.0.1", 0, server=server))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answer = stub.ModelInfer.future(doubling_request(np.ones((1, 3), np.float32), "hang"), timeout=60)
            assert eventually(lambda: backend.last_request is not None)  # "hang" never answers
            with caplog.at_level(logging.WARNING, logger="serving.protocol.grpc_server"):
                loop.run(handle.stop(0.2))
            with pytest.raises(grpc.RpcError):
                answer.result(timeout=30)
    finally:
        loop.run(handle.stop(0.2))
    counted = {"kiln": "1 call(s)", "grpcio": "calls (grpc.aio does not say how many)"}[server]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"gRPC server stop: the shutdown grace (0.2 s) ran out with {counted} in flight: cut"]
    assert handle.cut == (1 if server == "kiln" else None)
    assert backend.abandoned.wait(10)


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_a_grpc_stop_with_no_call_in_flight_says_nothing(loop, caplog, server):
    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, server=server))
    with caplog.at_level(logging.WARNING, logger="serving.protocol.grpc_server"):
        loop.run(handle.stop(5.0), timeout=10)  # returns at once: nothing to wait for
    assert not caplog.records and handle.cut == 0
