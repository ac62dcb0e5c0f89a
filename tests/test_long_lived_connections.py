"""Connections held for hours behind load balancers and sidecars: gRPC clients' keepalive pings never
end a connection or its streams on either gRPC server, an HTTP/1.1 keep-alive connection is never
closed under a request its client sent in time, and a client whose gateway drained reconnects to the
next one."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import uvicorn
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import start_grpc_server
from serving.protocol.http1 import http_protocol
from tests.h2_client import doubling_request, parse_frames
from tests.test_grpc import FakeBackend

X = np.arange(6, dtype=np.float32).reshape(2, 3)

# what tritonclient.grpc.KeepAliveOptions passes, at the shortest interval grpc core sends (it takes any
# shorter one for a second): a ping a second, calls or not
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class FrameRelay:
    """A TCP relay between one gRPC client and a server that reads the HTTP/2 frames crossing it: the
    client's PINGs counted, the server's GOAWAYs kept."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pings = 0
        self.goaways: list[bytes] = []
        self.changed = threading.Condition()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        pending, preface = b"", len(w.PREFACE) if from_client else 0
        while True:
            try:
                data = source.recv(65536)
                sink.sendall(data)
            except OSError:
                data = b""
            if not data:
                source.close()
                sink.close()
                return
            pending += data
            if preface:
                taken = min(preface, len(pending))
                pending, preface = pending[taken:], preface - taken
            frames, pending = parse_frames(pending)
            with self.changed:
                for kind, flags, _, payload in frames:
                    if from_client and kind == w.PING and not flags & w.ACK:
                        self.pings += 1
                    elif not from_client and kind == w.GOAWAY:
                        self.goaways.append(payload)
                self.changed.notify_all()

    def wait_for_pings(self, count: int, timeout: float = 15.0) -> int:
        with self.changed:
            self.changed.wait_for(lambda: self.pings >= count or self.goaways, timeout)
            return self.pings

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _stream_request(i: int) -> service_pb2.ModelInferRequest:
    request = doubling_request(X + i)
    request.id = f"r{i}"
    return request


def _requests(sent: queue.Queue) -> Iterator[service_pb2.ModelInferRequest]:
    while (request := sent.get()) is not None:
        yield request


@pytest.mark.parametrize("kind", ["kiln", "grpcio"])
def test_keepalive_pings_every_second_never_end_an_idle_stream_or_its_connection(loop, kind: str) -> None:
    """A client pinging every second with a stream open and idle: after 4 pings (grpc core's default
    policy, Triton's too, sent GOAWAY too_many_pings at the third and cut the stream), the stream and
    the connection still answer. Kiln's read and send timeouts, shortened below the idle time, never
    cut an idle client that reads."""
    timeouts = {"read_timeout_s": 0.2, "send_timeout_s": 0.2}
    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, server=kind, **timeouts))
    relay = FrameRelay(handle.port)
    sent: queue.Queue = queue.Queue()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}", options=KEEPALIVE) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answers = stub.ModelStreamInfer(_requests(sent), timeout=30)
            sent.put(_stream_request(0))
            assert next(answers).infer_response.id == "r0"
            before = relay.wait_for_pings(1)
            assert relay.wait_for_pings(before + 4) >= before + 4, (relay.pings, relay.goaways)
            sent.put(_stream_request(1))
            reply = next(answers)
            assert not reply.error_message and reply.infer_response.id == "r1"
            assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
            sent.put(None)
            assert list(answers) == []
        assert relay.goaways == []
    finally:
        sent.put(None)
        relay.close()
        loop.run(handle.stop(0.5))


@pytest.mark.parametrize("kind", ["kiln", "grpcio"])
def test_a_client_whose_gateway_drained_reconnects_to_the_next_one_on_the_same_port(loop, kind: str) -> None:
    """Once the client has seen its connection go (GOAWAY, then the close), its next call reaches the new
    server. A call sent before the client saw it could go out on the dying connection and fail
    UNAVAILABLE, which clients retry: the test waits for the channel to leave READY first."""
    first = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, server=kind))
    port = first.port
    states: queue.Queue = queue.Queue()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
        channel.subscribe(states.put)  # its connectivity, from now on (READY first)
        loop.run(first.stop(1.0))  # GOAWAY, then the connection closed
        deadline = time.monotonic() + 30
        while states.get(timeout=max(0.0, deadline - time.monotonic())) == grpc.ChannelConnectivity.READY:
            pass
        second = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", port, server=kind))
        try:
            reply = stub.ModelInfer(doubling_request(X), timeout=10, wait_for_ready=True)
            np.testing.assert_array_equal(
                np.frombuffer(reply.raw_output_contents[0], np.float32), 2 * X.ravel()
            )
        finally:
            channel.unsubscribe(states.put)
            loop.run(second.stop(0.5))


# --- HTTP/1.1 keep-alive ----------------------------------------------------------------------------

KEEP_ALIVE_S = 0.2


class StallingApp:
    """An ASGI app answering ``ok``; once its answer to ``/stall`` is complete, which arms the keep-alive
    timer, it makes the event loop busy inside a read (where expired timers run before the next read
    on uvloop) until the test says go on and the keep-alive has expired. That read is the loop's next
    one, before any timer runs, so the stall begins before the keep-alive can expire however loaded the
    machine: set off by another connection's request, the stall had to reach the loop within the 0.2 s
    keep-alive, which a busy machine can miss (the connection closed before the stall)."""

    def __init__(self) -> None:
        self.stalled = threading.Event()
        self.go_on = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})  # complete: the keep-alive is armed
        if scope["path"] == "/stall":
            self._stall_in_a_read(asyncio.get_running_loop())

    def _stall_in_a_read(self, loop: asyncio.AbstractEventLoop) -> None:
        stall_until = time.monotonic() + 3 * KEEP_ALIVE_S  # the keep-alive expires during the stall
        ours, theirs = socket.socketpair()

        def busy() -> None:
            loop.remove_reader(ours)
            ours.close()
            theirs.close()
            self.stalled.set()
            self.go_on.wait(10)
            while time.monotonic() < stall_until:  # the loop busy past the keep-alive expiry
                pass

        loop.add_reader(ours, busy)
        theirs.send(b"x")


@pytest.fixture(params=["asyncio", "uvloop"])
def http_server(request) -> Iterator[tuple[int, StallingApp]]:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    app = StallingApp()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        loop=request.param,
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_S,  # type: ignore[arg-type]  # uvicorn takes the seconds as they are
        http=http_protocol(),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield server.servers[0].sockets[0].getsockname()[1], app
    app.go_on.set()
    server.should_exit = True
    thread.join(10)


def _get(sock: socket.socket, path: bytes) -> None:
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: kiln\r\n\r\n" % path)


def _answer(sock: socket.socket, count: int = 1) -> bytes:
    """What ``sock`` receives until ``count`` answers (each ending ``ok``) have come, or it is closed."""
    data = b""
    while data.count(b"\r\n\r\nok") < count:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def test_a_request_sent_in_time_is_answered_though_the_loop_was_busy_past_the_keep_alive(http_server) -> None:
    port, app = http_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as pooled:
        _get(pooled, b"/stall")  # answered, then the loop is held past the keep-alive that answer armed
        assert app.stalled.wait(10)
        _get(pooled, b"/ok")  # well within its keep-alive, while the loop is busy
        app.go_on.set()
        answers = _answer(pooled, 2)  # /ok's was reset, unread, on uvloop
        assert answers.startswith(b"HTTP/1.1 200") and answers.count(b"HTTP/1.1 200") == 2, answers


def test_an_idle_keep_alive_connection_is_still_closed_cleanly_when_it_expires(http_server) -> None:
    port, _ = http_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as pooled:
        _get(pooled, b"/ok")
        assert _answer(pooled).startswith(b"HTTP/1.1 200")
        assert pooled.recv(1) == b""  # a FIN once the keep-alive runs out, not a reset


def _hang_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="hang")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    return request


def test_hundreds_of_calls_timing_out_together_on_one_channel_keep_their_connection(loop) -> None:
    """An overloaded server's clients time their calls out by the hundred: each deadline sends a
    RST_STREAM, which the rapid-reset budget counted, so 400 calls of one channel timing out together
    closed the connection (ENHANCE_YOUR_CALM) with calls in flight, UNAVAILABLE. A reset past half the
    call's own timeout is its deadline, not a rapid reset."""
    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0))
    relay = FrameRelay(handle.port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}") as channel:
            infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            calls = [infer.future(_hang_request(), timeout=0.5) for _ in range(400)]
            codes = {call.code() for call in calls}
            assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
        assert relay.goaways == []
    finally:
        relay.close()
        loop.run(handle.stop(0.5))
