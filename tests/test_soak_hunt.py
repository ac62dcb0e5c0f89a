"""What a gateway that runs for weeks must not let grow or run out: each test drives the few requests
or events that used to grow a structure (or overflow a counter) and checks it is released (or goes on)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
import weakref

import numpy as np
import pytest

from serving.execution.batcher import BatchPolicy, DynamicBatcher
from serving.handoff import Balancer, create_board
from serving.protocol.json_offload import JsonOffload
from tests.test_handoff import Tagged
from tests.waiting import until


def test_hand_offs_balance_on_after_a_worker_has_adopted_two_billion_connections():
    board = create_board(2)

    async def main():
        workers = []
        for index in (0, 1):
            balancer = Balancer(board, index)
            held = balancer.counted("http")
            factory = balancer.arrivals("http", lambda tag=f"{index}".encode(), held=held: Tagged(tag, held))
            server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
            workers.append((balancer, server, held))
        (first, server0, held0), (second, _, held1) = workers
        port0 = server0.sockets[0].getsockname()[1]
        # weeks of short connections handed from worker 0 to worker 1: the int32 slot of worker 1's
        # adoptions is at its largest, and worker 0 has sent as many (none on their way)
        adopted = second._adopted_slot(0, 1, 0)
        first._sent[0][1] = second._slots[adopted] = 2**31 - 1
        clients = []

        async def connect() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port0)
            clients.append(writer)
            writer.write(b"?")
            return await asyncio.wait_for(reader.readexactly(1), 10)

        try:
            assert await connect() == b"0"  # a tie stays
            assert await connect() == b"1"  # worker 1 holds fewer: handed on, adoption 2**31
            await until(lambda: len(held1) == 1 and not second._adopting)
            assert await connect() == b"0"  # a tie stays: worker 0 holds two
            # worker 1 holds one and has none on its way (the count went round instead of failing
            # and freezing, which left one connection counted on its way to worker 1 for ever)
            assert await connect() == b"1"
            assert (len(held0), len(held1)) == (2, 2)
        finally:
            for writer in clients:
                writer.close()
            for balancer, server, _ in workers:
                server.close()
                balancer.close()

    try:
        asyncio.run(main())
    finally:
        board.unlink(missing_ok=True)


def test_an_idle_batch_instance_holds_no_request_of_the_last_batch_it_ran():
    async def main():
        batcher = DynamicBatcher(
            "m",
            lambda instance, inputs: {"y": inputs["x"] * 2},
            BatchPolicy(max_batch_size=8, max_queue_delay_s=0.05),
        )
        batcher.start()
        try:
            # a burst's last batch: its inputs stand for request bodies (binary tensors are views of them)
            inputs = [np.full((1, 1 << 16), i, np.float32) for i in range(4)]
            held = [weakref.ref(array) for array in inputs]
            answers = await asyncio.gather(*(batcher.submit({"x": array}) for array in inputs))
            assert [float(a["y"][0, 0]) for a in answers] == [0.0, 2.0, 4.0, 6.0]
            del inputs, answers
            # the instance thread waits for the next batch, which may not come for hours
            await until(lambda: all(ref() is None for ref in held), timeout_s=5)
        finally:
            await batcher.stop(grace_s=5)

    asyncio.run(main())


def _parse_slowly_in_the_helper(body: bytes) -> int:
    """A parse that takes the helper a while (in place: at once); the pid of the process that ran it.
    In the helper, it first creates the file ``body`` names (where it is one): the test kills the helper
    once it is parsing, not while it starts (killed before its initializer had run, on a loaded
    machine, a body once waited past the test's 20 s)."""
    if multiprocessing.parent_process() is not None:
        if body != b"{}":
            open(body, "x").close()  # noqa: SIM115 - a marker, closed at once
        time.sleep(30)  # the helper is killed long before
    return os.getpid()


# the pool's own thread dies of the InvalidStateError (Python 3.11) that this test provokes
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_bodies_queued_behind_a_client_gone_are_parsed_in_place_when_the_json_helper_dies(tmp_path):
    async def main():
        offload = JsonOffload(offload_bytes=1)
        try:
            parse = _parse_slowly_in_the_helper
            parsing = tmp_path / "parsing"
            running = asyncio.ensure_future(offload.call(8, parse, bytes(parsing)))
            next_up = asyncio.ensure_future(offload.call(8, parse, b"{}"))
            await until(parsing.exists)  # the helper is up and parsing the first body
            gone, behind = (asyncio.ensure_future(offload.call(8, parse, b"{}")) for _ in range(2))
            await asyncio.sleep(0)  # each is queued for the helper
            gone.cancel()  # its client left while its body waited
            pool = offload._pool
            manager = pool._executor_manager_thread  # the dead pool is shut down: it lets go of this
            for process in list(pool._processes.values()):
                process.kill()  # out of memory
            answers = await asyncio.wait_for(asyncio.gather(running, next_up, behind), 20)
            assert answers == [os.getpid()] * 3  # each parsed in place once the helper was gone
            assert not offload._waiting
            await until(lambda: not manager.is_alive())  # its failure is this test's
        finally:
            offload.close()

    asyncio.run(main())


@pytest.mark.parametrize("top_k", ["2", "many"])
def test_a_multipart_forms_spooled_files_are_closed_once_read_or_refused(monkeypatch, top_k):
    """The uploads of a multipart classify were left to the garbage collector (a ResourceWarning for
    each unclosed SpooledTemporaryFile, a file on disk past 1 MB until then)."""
    import httpx
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    from serving.errors import UnprocessableInput
    from serving.protocol import v1

    closed = []
    real_close = UploadFile.close

    async def close(self):
        closed.append(self.filename)
        await real_close(self)

    monkeypatch.setattr(UploadFile, "close", close)
    files = [("files", ("a.png", b"a", "image/png")), ("files", ("b.png", b"b", "image/png"))]
    form = httpx.Request("POST", "http://x/", files=files, data={"top_k": top_k})
    body = form.read()

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"content-type", form.headers["content-type"].encode())],
    }
    request = Request(scope, receive)
    if top_k == "many":
        with pytest.raises(UnprocessableInput):
            asyncio.run(v1._read_form(request, 4))
    else:
        assert asyncio.run(v1._read_form(request, 4)) == ([b"a", b"b"], 2)
    assert sorted(closed) == ["a.png", "b.png"]


def _reset(sock) -> None:
    """Close ``sock`` with an RST (SO_LINGER 0), as many load balancers' health checks close theirs."""
    import socket
    import struct

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n",  # uvicorn's ASGI cycle
        b"POST /v1/models/m/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",  # a lean route
        b"",  # a connection that sent nothing
    ],
    ids=["cycle", "lean", "no-request"],
)
def test_a_connection_its_client_resets_is_released_at_once_not_after_the_keep_alive(request_bytes):
    """uvicorn cancels its keep-alive timer only where a connection closes cleanly: one reset by its
    client was held by the timer, its protocol, transport and request, for the whole keep-alive
    (75 s by default): ~11 KB for each connection a client reset, all of them held at once."""
    import gc
    import socket

    from serving.protocol.http1 import http_protocol
    from tests.repo_fixtures import LiveServer
    from tests.test_http1_direct import make_app
    from tests.waiting import eventually

    base = http_protocol()
    if isinstance(base, str):
        pytest.skip("httptools is not installed: uvicorn serves with its h11 protocol")
    made = []

    class Watched(base):
        def connection_made(self, transport):
            made.append(weakref.ref(self))
            super().connection_made(transport)

    with LiveServer(make_app(), http=Watched, keep_alive_s=75) as live:
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
            if request_bytes:
                sock.sendall(request_bytes)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += sock.recv(4096)
                assert answer.startswith(b"HTTP/1.1 200"), answer
            _reset(sock)
        assert eventually(lambda: len(made) == 5)

        def released() -> bool:
            gc.collect()
            return all(ref() is None for ref in made)

        assert eventually(released, timeout_s=5), "a reset connection is held by its keep-alive timer"
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:  # still serves
            sock.sendall(b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
