"""Least-connections placement across gateway workers: a worker that accepts a connection while another
worker holds fewer connections of that protocol hands the socket to that worker.

The workers share their ports with SO_REUSEPORT, and the kernel picks the worker for each new
connection by a hash of its addresses: a fair share of many connections, but not of a few long-lived
ones. perf_analyzer's ``--streaming`` at concurrency 64 opens 3 gRPC connections, and in a quarter of
the runs all three landed on one worker, whose one ONNX Runtime thread then served everything while the
other worker idled (~1 550 infer/s against ~2 400 for a 2/1 split); a client of 8 translation
connections was split 1/7 and 2/6.

Each worker publishes on a shared board (a file the ``--workers`` parent makes, memory-mapped by every
worker) how many connections of each protocol it holds, and reads the others' counts when it accepts
one. The socket travels as ``SCM_RIGHTS`` over a Unix datagram socket that each worker listens on
(a Linux abstract name derived from the board's, so nothing is left on disk), and the receiver adopts
it with ``loop.connect_accepted_socket`` and the same protocol factory as its own listener. A
connection is handed on from its first protocol's ``connection_made``, before anything is read from it
or written to it: the bytes the client has sent wait in the kernel for whichever worker reads them.

Every slot of the board has one writer: a worker's counts are its own; what it adopted from each
sender is counted by the receiver; a sender remembers what it sent, so sent minus adopted is what is
still in flight to a worker (counted as held there: a burst of connections does not all go to the one
worker that looked emptiest). Both counts go round modulo 2**32 (an int32 slot), their difference
read as a small signed number, so weeks of short connections never overflow a slot. A hand-off that
cannot be made (the receiver is stopping or gone, its queue is full) keeps the connection where it
was accepted.
"""

from __future__ import annotations

import array
import asyncio
import logging
import mmap
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.execution.occupancy import zeroed_file
from serving.process_tree import maker_prefix

log = logging.getLogger(__name__)

KINDS = ("http", "grpc")  # the protocols balanced, each on its own (their connections differ in weight)
BOARD_PREFIX = "kiln-connections-"  # then the pid of the parent that made it (serving.workers sweeps)
_INT = 4  # bytes of a board slot (an aligned int32: read and written whole)
_WRAP = 1 << 32  # the hand-off counts go round an int32 slot; in flight: their difference modulo this
_UCRED = struct.Struct("3i")  # the sender's pid, uid and gid, as SCM_CREDENTIALS gives them


def _received(receiver: socket.socket) -> tuple[bytes, int | None, bool]:
    """One hand-off's bytes and descriptor from ``receiver`` (None where none came), and whether this
    process's open-file limit lost a descriptor a worker of its own sent (the kernel closes it). Another user's
    process may send to a worker too (an abstract name has no permissions, and the board's name that
    it derives from is listed in /dev/shm): what it sends is closed unread. A worker took any
    descriptor and leaked those that were no socket, so any user of the machine could fill every
    worker's descriptor table (20 000 pipes in a second), and the gateway answered nothing more."""
    fds = array.array("i")
    room = socket.CMSG_SPACE(fds.itemsize) + socket.CMSG_SPACE(_UCRED.size)
    data, ancillary, flags, _address = receiver.recvmsg(2, room)
    uid = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            uid = _UCRED.unpack_from(payload)[1]
    keep = fds[0] if fds and uid == os.getuid() else None
    for fd in fds:
        if fd != keep:
            os.close(fd)
    return data, keep, not fds and bool(flags & socket.MSG_CTRUNC) and uid == os.getuid()


def _wrapped(count: int) -> int:
    """``count`` as an int32 slot holds it, modulo 2**32: a worker's adopted count passes 2**31 after
    weeks of short connections, and a slot refused the value (ValueError at every adoption after it)."""
    return (count + (1 << 31)) % _WRAP - (1 << 31)


def _slots(workers: int) -> int:
    """Slots of a board for ``workers``: per protocol, each worker's count and whether it adopts, and
    what each worker adopted from each other one."""
    return len(KINDS) * (2 * workers + workers * workers)


def create_board(workers: int) -> Path:
    """A zeroed connections board for ``workers`` processes (shared memory where there is some)."""
    return zeroed_file(maker_prefix(BOARD_PREFIX), _slots(workers) * _INT, "connections board")


def _workers_of(size: int) -> int:
    """The worker count a board of ``size`` bytes was made for."""
    workers = 1
    while _slots(workers) * _INT < size:
        workers += 1
    if _slots(workers) * _INT != size:
        raise ValueError(f"a connections board of {size} bytes fits no number of workers")
    return workers


class CountedSet(set):
    """A protocol's set of open connections (uvicorn's ``server_state.connections``, the gRPC server's)
    that publishes its size on every change."""

    def __init__(self, publish: Callable[[int], None]) -> None:
        super().__init__()
        self._publish = publish

    def add(self, item: Any) -> None:
        super().add(item)
        self._publish(len(self))

    def discard(self, item: Any) -> None:
        super().discard(item)
        self._publish(len(self))

    def remove(self, item: Any) -> None:
        super().remove(item)
        self._publish(len(self))


class Balancer:
    """This worker's end of the board at ``board``, where it is ``index``."""

    def __init__(self, board: Path, index: int, on_handed: Callable[[str], None] | None = None) -> None:
        self.workers = _workers_of(board.stat().st_size)
        if not 0 <= index < self.workers:
            raise ValueError(f"worker index {index} is outside the board {board} ({self.workers} workers)")
        with open(board, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), 0)
        self._slots: memoryview | None = memoryview(self._map).cast("i")
        self.index = index
        self._name = board.name
        self._sent = [[0] * self.workers for _ in KINDS]  # what this worker handed to each, per protocol
        self._factories: dict[int, Callable[[], asyncio.BaseProtocol]] = {}
        self._adopting: set[asyncio.Task] = set()
        self._receiver: socket.socket | None = None
        self._sender: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unavailable = False  # no Unix datagram sockets with abstract names here (not Linux)
        self.handed = [0] * len(KINDS)  # connections handed on, per protocol
        self._on_handed = on_handed  # called with the protocol's name for each (a metric)
        self.adopted = [0] * len(KINDS)
        self._told_lost = False  # a hand-off lost at the open-file limit said so (once)

    # -- the board's slots ---------------------------------------------------------------------------

    def _count_slot(self, kind: int, worker: int) -> int:
        return kind * (2 * self.workers + self.workers * self.workers) + worker

    def _ready_slot(self, kind: int, worker: int) -> int:
        return self._count_slot(kind, worker) + self.workers

    def _adopted_slot(self, kind: int, receiver: int, sender: int) -> int:
        return self._count_slot(kind, 0) + 2 * self.workers + receiver * self.workers + sender

    def counts(self, kind: str) -> list[int]:
        """Every worker's published count of open ``kind`` connections."""
        k = KINDS.index(kind)
        return [self._slots[self._count_slot(k, w)] for w in range(self.workers)]

    def counted(self, kind: str) -> CountedSet:
        """A set for the ``kind`` server's open connections whose size this worker publishes."""
        slot = self._count_slot(KINDS.index(kind), self.index)

        def publish(count: int) -> None:
            if self._slots is not None:
                self._slots[slot] = count

        return CountedSet(publish)

    # -- accepting ------------------------------------------------------------------------------------

    def arrivals(self, kind: str, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], Arrival]:
        """The protocol factory for this worker's ``kind`` listener (called on its event loop): each
        connection it accepts is handed on or served by ``factory``'s protocol, which also serves the
        connections other workers hand here (:meth:`adopt`)."""
        self.adopt(kind, factory)
        return lambda: self.arrival(kind, factory)

    def arrival(self, kind: str, factory: Callable[[], asyncio.BaseProtocol]) -> Arrival:
        """The first protocol of one accepted ``kind`` connection (for a server that builds each
        connection's protocol itself, as uvicorn does)."""
        return Arrival(self, KINDS.index(kind), factory)

    def adopt(self, kind: str, factory: Callable[[], asyncio.BaseProtocol]) -> None:
        """Take ``kind`` connections from the other workers from now on, served by ``factory``'s
        protocol (called on this worker's event loop, once its ``kind`` server is up)."""
        k = KINDS.index(kind)
        if not self._open():
            return
        self._factories[k] = factory
        self._slots[self._ready_slot(k, self.index)] = 1  # type: ignore[index]

    def _open(self) -> bool:
        """Listen for hand-offs; False (said once in the log) where this system cannot: this worker
        then neither hands connections on nor takes any, and serves as without a board."""
        if self._receiver is not None or self._unavailable:
            return not self._unavailable
        self._loop = asyncio.get_running_loop()
        try:
            receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except (AttributeError, OSError) as exc:  # no Unix sockets here
            return self._give_up(exc)
        try:
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # who sent each: _received
            receiver.bind(self._address(self.index))  # Linux's abstract names
        except (AttributeError, OSError) as exc:
            receiver.close()
            return self._give_up(exc)
        receiver.setblocking(False)
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._receiver = receiver
        self._loop.add_reader(receiver.fileno(), self._receive)
        log.info(
            "worker %d of %d: a new connection goes to the worker holding fewest of its protocol",
            self.index,
            self.workers,
        )
        return True

    def _give_up(self, exc: BaseException) -> bool:
        self._unavailable = True
        log.warning(
            "worker %d: connections cannot be handed between workers here (%s): each stays on the "
            "worker the kernel gives it",
            self.index,
            exc,
        )
        return False

    def _address(self, worker: int) -> bytes:
        return f"\0kiln-handoff-{self._name}-{worker}".encode()  # an abstract name: nothing on disk

    def place(self, kind: int, transport: asyncio.BaseTransport) -> bool:
        """Hand the connection of ``transport`` (just accepted, nothing read) to the worker holding the
        fewest ``kind`` connections, counting those on their way there, when that is fewer than this
        worker holds; False when it stays here."""
        slots, workers, me = self._slots, self.workers, self.index
        if slots is None or self._sender is None:
            return False
        fewest, target = slots[self._count_slot(kind, me)], None
        for worker in range(workers):
            if worker == me or not slots[self._ready_slot(kind, worker)]:
                continue
            in_flight = _wrapped(self._sent[kind][worker] - slots[self._adopted_slot(kind, worker, me)])
            held = slots[self._count_slot(kind, worker)] + in_flight
            if held < fewest:
                fewest, target = held, worker
        if target is None:
            return False
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_extra_info("sslcontext") is not None:  # TLS has begun here
            return False
        try:
            # sendmsg, not socket.send_fds: that drops its address argument (CPython 3.11)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))]
            self._sender.sendmsg([bytes((kind, me))], rights, 0, self._address(target))
        except OSError as exc:  # the receiver is gone or stopping (refused), or its queue is full
            log.debug("kept a %s connection: worker %d did not take it (%s)", KINDS[kind], target, exc)
            return False
        self._sent[kind][target] = _wrapped(self._sent[kind][target] + 1)
        self.handed[kind] += 1
        if self._on_handed is not None:
            self._on_handed(KINDS[kind])
        return True

    # -- adopting -------------------------------------------------------------------------------------

    def _receive(self) -> None:
        while self._receiver is not None:
            try:
                data, fd, lost = _received(self._receiver)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("connection hand-off: receiving failed: %s", exc)
                return
            if fd is None:
                if lost:
                    self._lost(data)
                continue
            try:
                sock = socket.socket(fileno=fd)
            except OSError:  # no socket
                os.close(fd)
                continue
            malformed = len(data) != 2 or data[0] >= len(KINDS) or data[1] >= self.workers
            if malformed or sock.type != socket.SOCK_STREAM:
                sock.close()
                continue
            kind, sender = data
            factory = self._factories.get(kind)
            if factory is None:  # stopping: the client sees the connection close unanswered, and retries
                sock.close()
                self._note_adopted(kind, sender)
                continue
            task = self._loop.create_task(self._adopt(kind, sender, sock, factory))  # type: ignore[union-attr]
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    def _lost(self, data: bytes) -> None:
        """A connection handed here whose descriptor this worker had no room for (its open-file limit):
        counted as adopted, or its sender counted it on its way here for good and handed this worker no
        more of that protocol's connections; said once."""
        if len(data) != 2 or data[0] >= len(KINDS) or data[1] >= self.workers:
            return
        self._note_adopted(data[0], data[1])
        if not self._told_lost:
            self._told_lost = True
            log.warning(
                "worker %d: a %s connection handed from worker %d was lost, closed unanswered: this "
                "worker is at its open-file limit (ulimit -n)",
                self.index,
                KINDS[data[0]],
                data[1],
            )

    async def _adopt(
        self, kind: int, sender: int, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol]
    ) -> None:
        try:
            await self._loop.connect_accepted_socket(factory, sock)  # type: ignore[union-attr]
            self.adopted[kind] += 1
        except OSError as exc:  # the client left on the way
            log.debug("connection hand-off: adopting a %s connection failed: %s", KINDS[kind], exc)
            sock.close()
        finally:
            self._note_adopted(kind, sender)  # counted in this worker's set by now, if it is open

    def _note_adopted(self, kind: int, sender: int) -> None:
        if self._slots is not None:
            slot = self._adopted_slot(kind, self.index, sender)
            self._slots[slot] = _wrapped(self._slots[slot] + 1)

    def stop_adopting(self) -> None:
        """Take no more connections from other workers (the gateway is draining); those that come
        anyway are closed unanswered."""
        for kind in list(self._factories):
            if self._slots is not None:
                self._slots[self._ready_slot(kind, self.index)] = 0
        self._factories.clear()

    def close(self) -> None:
        self.stop_adopting()
        if self._receiver is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._receiver.fileno())
            self._receiver.close()
            self._receiver = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._slots is not None:
            slots, self._slots = self._slots, None
            slots.release()
            self._map.close()


class Arrival(asyncio.Protocol):
    """The first protocol of an accepted connection: hands it to another worker, or replaces itself
    with the listener's protocol before anything is read."""

    __slots__ = ("_balancer", "_kind", "_factory")

    def __init__(self, balancer: Balancer, kind: int, factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._balancer, self._kind, self._factory = balancer, kind, factory

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._balancer.place(self._kind, transport):
            transport.abort()  # closes this process's descriptor; the other worker's keeps it open
            return
        protocol = self._factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # handed on (this process let go of its descriptor); the connection lives on elsewhere


def balancer_for(settings: Any, on_handed: Callable[[str], None] | None = None) -> Balancer | None:
    """This worker's balancer, where there are several workers and balancing is on; ``on_handed`` is
    called with the protocol of each connection it hands on."""
    if settings.connection_board is None or not settings.balance_connections:
        return None
    return Balancer(settings.connection_board, settings.worker_index, on_handed)
