"""A worker of ``--workers`` at its open-file limit cannot take a connection another worker hands it: the
kernel drops the descriptor (``MSG_CTRUNC``) and the client's connection closes. The sender counted
that connection on its way to the worker for good, as if the worker held it: after a burst of
connections at the limit, a worker handed the other no more of that protocol's connections until
restarted (20 gRPC hand-offs lost, 20 connections counted on a worker for ever). The receiver now counts
a lost hand-off as arrived, and says once that it is at its open-file limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import asyncio, logging, os, resource, socket
from serving.handoff import Balancer, create_board

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")


class Accepted:
    def __init__(self, sock):
        self.sock = sock

    def get_extra_info(self, name):
        return self.sock if name == "socket" else None


async def main(board):
    first, second = Balancer(board, 0), Balancer(board, 1)
    first.adopt("http", asyncio.Protocol)
    second.adopt("http", asyncio.Protocol)
    asyncio.get_running_loop().remove_reader(second._receiver.fileno())  # received below, at the limit
    first.counted("http").add("an old connection")  # worker 0 holds more: it hands the next one on
    client, accepted = socket.socketpair()
    assert first.place(0, Accepted(accepted))
    accepted.close()
    free = os.dup(0)  # the lowest free descriptor: at this limit the hand-off's has no room
    os.close(free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    second._receive()
    adopted = first._slots[first._adopted_slot(0, 1, 0)]
    print("in flight", first._sent[0][1] - adopted, "client closed", client.recv(1) == b"")
    first.close()
    second.close()


board = create_board(2)
try:
    asyncio.run(main(board))
finally:
    board.unlink()
"""


def test_a_hand_off_lost_at_the_receivers_open_file_limit_is_not_counted_on_its_way_for_good():
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert "in flight 0 client closed True" in out.stdout, out.stdout + out.stderr[-2000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "open-file limit" in warnings[0] and "from worker 0" in warnings[0]
