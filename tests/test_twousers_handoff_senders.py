"""A gateway worker takes connections handed on only from its own user's processes, and only sockets
(``serving.handoff``). Its hand-off socket has an abstract name, which has no permissions, derived from
the board's name that anyone may list in /dev/shm: another user of the machine sent every worker
20 000 pipes in a second, each leaked (and logged as a traceback), and the gateway answered nothing
more (reproduced with two users); a socket it sent was served as a client connection."""

from __future__ import annotations

import array
import asyncio
import os
import socket
from pathlib import Path

import pytest

from serving import handoff
from serving.handoff import Balancer, create_board


@pytest.fixture
def board():
    path = create_board(2)
    yield path
    path.unlink(missing_ok=True)


def send(balancer: Balancer, fd: int) -> None:
    """A hand-off datagram to ``balancer``'s worker carrying ``fd``, as worker 1 of its gateway sends one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        sender.sendmsg([bytes((0, 1))], rights, 0, balancer._address(balancer.index))


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def receive_after(balancer: Balancer, sends, rounds: int = 1) -> None:
    """``balancer`` adopting HTTP connections, then ``rounds`` times ``sends`` made (fewer datagrams
    than a Unix socket queues: 10) and every datagram received."""
    balancer.adopt("http", asyncio.Protocol)
    for _ in range(rounds):
        sends()
        balancer._receive()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="procfs counts the descriptors")
def test_descriptors_that_are_no_sockets_are_closed(board) -> None:
    balancer = Balancer(board, 0)

    def pipes() -> None:
        for _ in range(5):
            read, write = os.pipe()
            send(balancer, read)
            os.close(read)
            os.close(write)

    before = open_descriptors()
    try:
        asyncio.run(receive_after(balancer, pipes, rounds=10))
        assert open_descriptors() <= before + 2  # its receiving and sending sockets
    finally:
        balancer.close()


def test_a_socket_sent_by_another_users_process_is_closed_unserved(board, monkeypatch) -> None:
    balancer = Balancer(board, 0)
    own = os.getuid()
    monkeypatch.setattr(handoff.os, "getuid", lambda: own + 1)  # this process is now that other user
    client, sent = socket.socketpair()
    served: list[asyncio.Protocol] = []

    async def hand_on() -> None:
        balancer.adopt("http", lambda: served.append(asyncio.Protocol()) or served[-1])
        send(balancer, sent.fileno())
        sent.close()
        balancer._receive()
        assert not balancer._adopting  # no adoption under way
        await asyncio.sleep(0)  # one turn, in which an adoption would have begun

    try:
        asyncio.run(hand_on())
        assert served == [] and balancer.adopted == [0, 0]
        client.settimeout(5)
        assert client.recv(1) == b""  # closed: the worker's copy was the last
    finally:
        client.close()
        balancer.close()
