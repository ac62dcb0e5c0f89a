"""Least-connections hand-off between gateway workers (serving/handoff.py): the board's arithmetic, and
sockets handed between two balancers of one process (one event loop), on asyncio's loop and uvloop's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import pytest

from serving.handoff import KINDS, Balancer, _workers_of, create_board
from tests.waiting import until

LOOPS = ["asyncio"] + (["uvloop"] if __import__("importlib").util.find_spec("uvloop") else [])


def _run(loop_kind: str, coro):
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


@pytest.fixture
def board():
    path = create_board(2)
    yield path
    path.unlink(missing_ok=True)


class Tagged(asyncio.Protocol):
    """Answers each chunk with the worker's tag before it; records its connections."""

    def __init__(self, tag: bytes, open_: set) -> None:
        self.tag, self.open = tag, open_

    def connection_made(self, transport):
        self.transport = transport
        self.open.add(self)

    def data_received(self, data):
        self.transport.write(self.tag + data)

    def connection_lost(self, exc):
        self.open.discard(self)


def test_a_board_knows_its_worker_count_and_refuses_an_index_outside_it(board):
    assert _workers_of(board.stat().st_size) == 2
    for workers in (1, 3, 8):
        path = create_board(workers)
        try:
            assert Balancer(path, workers - 1).workers == workers
        finally:
            path.unlink()
    with pytest.raises(ValueError, match="outside the board"):
        Balancer(board, 2)
    with pytest.raises(ValueError, match="fits no number of workers"):
        _workers_of(7)


def test_counted_sets_publish_each_worker_s_connections_per_protocol(board):
    first, second = Balancer(board, 0), Balancer(board, 1)
    try:
        http, grpc = first.counted("http"), second.counted("grpc")
        http.add("a")
        http.add("b")
        grpc.add("c")
        assert second.counts("http") == [2, 0] and first.counts("grpc") == [0, 1]
        http.discard("a")
        http.discard("never there")
        grpc.remove("c")
        assert second.counts("http") == [1, 0] and first.counts("grpc") == [0, 0]
    finally:
        first.close()
        second.close()


async def _two_workers(board, kind="http", handed=None):
    """Two balancers on this loop, each with a listener of its own (the kernel's choice is ours here:
    the test connects to the worker it means to reach); worker 0 tells ``handed`` what it hands on."""
    workers = []
    for index in (0, 1):
        balancer = Balancer(board, index, handed.append if handed is not None and index == 0 else None)
        held = balancer.counted(kind)
        factory = balancer.arrivals(kind, lambda tag=f"{index}:".encode(), held=held: Tagged(tag, held))
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        workers.append((balancer, server, held, server.sockets[0].getsockname()[1]))
    return workers


async def _ask(port: int, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)  # sent at once: it waits in the kernel while the connection is handed on
    return reader, writer, await asyncio.wait_for(reader.readexactly(len(payload) + 2), 10)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_connections_go_to_the_worker_holding_fewest_and_keep_the_bytes_sent_at_once(board, loop_kind):
    async def main():
        handed = []
        workers = await _two_workers(board, handed=handed)
        (first, _, held0, port0), (second, _, held1, _) = workers
        clients = []
        try:
            # all four reach worker 0 (as three perf_analyzer streams could): it keeps one and hands
            # on the second, keeps the third (a tie stays), hands on the fourth
            for n in range(4):
                reader, writer, answer = await _ask(port0, f"hello {n}".encode())
                clients.append((reader, writer))
                assert answer == (b"0:" if n % 2 == 0 else b"1:") + f"hello {n}".encode()
            assert first.counts("http") == [2, 2] and len(held0) == len(held1) == 2
            assert (first.handed, second.adopted, handed) == ([2, 0], [2, 0], ["http", "http"])
            # a handed-on connection is the adopting worker's: it answers later requests and closes
            reader, writer = clients[1]
            writer.write(b"again")
            assert await asyncio.wait_for(reader.readexactly(7), 10) == b"1:again"
            writer.close()
            await writer.wait_closed()
            await until(lambda: len(held1) == 1)
            assert first.counts("http") == [2, 1]
            # now worker 1 holds fewer: a connection reaching worker 0 goes there
            reader, writer, answer = await _ask(port0, b"later")
            clients.append((reader, writer))
            assert answer == b"1:later"
        finally:
            for _, writer in clients:
                writer.close()
            for balancer, server, _, _ in workers:
                server.close()
                balancer.close()

    _run(loop_kind, main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_burst_counts_connections_on_their_way_and_a_stopping_worker_takes_none(board, loop_kind):
    async def main():
        workers = await _two_workers(board, "grpc")
        (first, _, _, port0), (second, _, held1, _) = workers
        try:
            # six at once reach worker 0 before worker 1 has adopted any: what is on its way counts
            asked = await asyncio.gather(*(_ask(port0, f"burst {n}".encode()) for n in range(6)))
            tags = sorted(answer[:2] for _, _, answer in asked)
            assert tags == [b"0:"] * 3 + [b"1:"] * 3, tags
            for _, writer, _ in asked:
                writer.close()
            # worker 1 drains: no more hand-offs to it, whatever it holds
            await until(lambda: not held1)
            second.stop_adopting()
            asked = [await _ask(port0, f"kept {n}".encode()) for n in range(3)]
            assert [answer[:2] for _, _, answer in asked] == [b"0:"] * 3
            for _, writer, _ in asked:
                writer.close()
        finally:
            for balancer, server, _, _ in workers:
                server.close()
                balancer.close()

    _run(loop_kind, main())


def test_a_hand_off_to_a_worker_that_is_gone_keeps_the_connection(board):
    async def main():
        workers = await _two_workers(board)
        (first, _, held0, port0), (second, server1, _, _) = workers
        try:
            held0.add("an old connection")  # worker 0 holds more, so it would hand on
            server1.close()
            second._slots[second._ready_slot(0, 1)] = 1  # still marked ready, but its socket is gone
            asyncio.get_running_loop().remove_reader(second._receiver.fileno())
            second._receiver.close()
            second._receiver = None
            _, writer, answer = await _ask(port0, b"stays")
            assert answer == b"0:stays" and first.handed == [0, 0]
            writer.close()
        finally:
            for balancer, server, _, _ in workers:
                server.close()
                balancer.close()

    asyncio.run(main())


def test_protocols_are_balanced_each_on_its_own(board):
    first = Balancer(board, 0)
    try:
        first.counted("http").add("x")
        assert first.counts("http") == [1, 0] and first.counts("grpc") == [0, 0]
        assert KINDS == ("http", "grpc")
    finally:
        first.close()


def test_no_descriptor_is_left_behind_by_a_hand_off(board):
    """The sender lets go of its descriptor; the receiver's closes with the connection."""

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main():
        workers = await _two_workers(board)
        (first, _, held0, port0), (_, _, held1, _) = workers
        try:
            held0.add("an old connection")
            before = fds()
            with socket.create_connection(("127.0.0.1", port0)) as client:
                client.sendall(b"one")
                client.settimeout(10)
                loop = asyncio.get_running_loop()
                assert await loop.run_in_executor(None, client.recv, 16) == b"1:one"
            await until(lambda: not held1 and fds() == before)
            assert first.handed == [1, 0]
        finally:
            for balancer, server, _, _ in workers:
                server.close()
                balancer.close()

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counting descriptors needs /proc (Linux)")
    asyncio.run(main())


def test_a_connection_that_reaches_a_worker_after_it_stopped_adopting_is_closed_unanswered(board):
    async def main():
        workers = await _two_workers(board)
        (first, _, held0, port0), (second, _, held1, _) = workers
        try:
            held0.add("an old connection")
            second.stop_adopting()
            second._slots[second._ready_slot(0, 1)] = 1  # the hand-off raced the stop
            reader, writer = await asyncio.open_connection("127.0.0.1", port0)
            writer.write(b"late")
            # closed (reset, since what it sent was never read): the client retries
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            assert first.handed == [1, 0] and second.adopted == [0, 0] and not held1
            # what it sent counts as arrived: worker 0 does not think one is still on its way there
            assert second._slots[second._adopted_slot(0, 1, 0)] == 1
        finally:
            for balancer, server, _, _ in workers:
                server.close()
                balancer.close()

    asyncio.run(main())


def test_only_a_worker_of_several_with_balancing_on_gets_a_balancer(board, tmp_path):
    from serving.__main__ import parse_args
    from serving.handoff import balancer_for

    base = ["--model-repository", str(tmp_path)]
    assert balancer_for(parse_args(base)) is None  # one process: nothing to balance
    worker = [*base, "--connection-board", str(board), "--worker-index", "1"]
    balancer = balancer_for(parse_args(worker))
    try:
        assert balancer is not None and (balancer.index, balancer.workers) == (1, 2)
    finally:
        balancer.close()
    assert balancer_for(parse_args([*worker, "--no-balance-connections"])) is None


def test_where_no_hand_off_socket_can_be_made_each_worker_keeps_what_it_accepts(board, monkeypatch, caplog):
    """A system without Linux's abstract Unix names: said once in the log, and connections are served
    where they land (none is handed to a worker that cannot take it, nor lost)."""
    real = socket.socket

    def no_unix(family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_UNIX:
            raise OSError(97, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    async def main():
        monkeypatch.setattr(socket, "socket", no_unix)
        workers = await _two_workers(board)
        monkeypatch.setattr(socket, "socket", real)
        (first, _, held0, port0), (second, _, _, _) = workers
        try:
            held0.add("an old connection")  # worker 0 holds more: it would hand on if it could
            _, writer, answer = await _ask(port0, b"here")
            assert answer == b"0:here" and first.handed == [0, 0]
            assert first.counts("http") == [2, 0]
            writer.close()
        finally:
            for balancer, server, _, _ in workers:
                server.close()
                balancer.close()

    with caplog.at_level("WARNING", logger="serving.handoff"):
        asyncio.run(main())
    warned = [r for r in caplog.records if "cannot be handed" in r.getMessage()]
    assert len(warned) == 2  # once a worker
