"""Large JSON request bodies parsed, and large JSON answers written, in a helper process, off the event loop.

Parsing JSON holds the interpreter's lock from start to end: a thread does not help. A KServe v2 infer
body with its tensors as JSON numbers is slow to parse: here one 224×224×3 FP32 image (3 MB of JSON)
took ~147 ms of ``parse_infer``, a batch of 8 ~1.2 s, and every other request of the process waited
behind it (health probes included). A body whose JSON part is at least ``offload_bytes`` is therefore
parsed by :func:`~serving.protocol.v2_codec.parse_infer` in a helper process, which returns the request
with its arrays (pickled as their bytes, a copy); the event loop serves the other requests meanwhile,
and the parse runs on another core. Smaller bodies, and the binary tensor data extension (what
tritonclient and perf_analyzer send, read without copies), are parsed in place as before. The
friendly classify route's JSON body (base64 images) goes the same way, decoded to the images' bytes
in the helper (:func:`serving.protocol.v1.read_json_images`), and so does a large translate body
(:func:`serving.protocol.translate.parse_body`; no valid one is longer than
:data:`~serving.protocol.translate.MAX_BODY_BYTES`, ~0.8 MB, and a longer one is refused unread).

One helper process a gateway process, started on the first large body (a forkserver child: never a
fork of a process running ONNX Runtime's threads) and stopped with the app; large bodies wait their
turn for it, which also bounds what a client sending many of them can take, smallest first
(:data:`ORDER_BYTES_S`), so that another client's small body is not held behind them.

A large JSON answer is the same wait the other way: ``json.dumps`` holds the lock too, and a body of
100 KB can ask for millions of values (a Transformer encoder's outputs for 64 sources of 256 tokens:
6.3 M floats, 243 MB of JSON, ~10 s of event loop here). :meth:`JsonOffload.encode_infer` writes an
answer of at least ``offload_bytes`` of JSON (by :data:`JSON_VALUE_BYTES` a value) in the helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import heapq
import itertools
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from serving.errors import Deadline
from serving.execution.base import InferResponse
from serving.execution.occupancy import disk_space
from serving.protocol.request_values import stated_size
from serving.protocol.v2_codec import ParsedInfer, encode_infer, json_values, parse_infer
from serving.threads import CpuPolicy, applied_cpu_policy, set_cpu_policy

log = logging.getLogger(__name__)
T = TypeVar("T")

# Shortages that pass (descriptors held by clients' connections, a process limit, memory): a helper that
# failed to start for one of them is tried again RETRY_S later. It was never tried again: a gateway that
# met its open-file limit once parsed every large body on the event loop until it restarted.
SHORT_NOW = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})
RETRY_S = 10.0
OFFLOAD_BYTES = 256 << 10  # ~12 ms of event loop for a body of FP32 numbers this long
JSON_VALUE_BYTES = 20  # an FP32 output as JSON: "0.10000000149011612, " (its float64 repr)
# The helper is handed one body at a time; the others wait here and are handed on smallest first, a body
# of n MiB going behind those that arrive up to n s after it (ORDER_BYTES_S): taken in arrival order, a
# 300 KB body (~10 ms to parse) waited behind every 64 MiB one before it (~2.5 s each), and 13 of them
# sent by another client made it a 504. A large body is passed over by smaller ones for a bounded time.
ORDER_BYTES_S = 1 << 20
# ...except that a body of up to PIPELINE_BYTES at the head of that order is handed on while the helper parses
# the one before it (two in hand, as the pool itself queues them), so that it is already in the helper's pipe
# when that one is done: handed one at a time, the helper idled between bodies for the answer's way back to the
# event loop and the next body's way out (~0.6 ms a body, ~15 % fewer 300 KB bodies a second). A body arriving
# then waits behind at most that one small body more (~40 ms for 1 MiB).
PIPELINE_BYTES = 1 << 20


class JsonOffload:
    """Parse infer bodies in place or, from ``offload_bytes`` of JSON up (0: never), in the helper."""

    def __init__(self, offload_bytes: int = OFFLOAD_BYTES) -> None:
        self.offload_bytes = offload_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._starting = threading.Lock()  # one helper, however many first large bodies arrive at once
        self._closes = 0  # close() calls: a body that asked for the helper before one gets none
        self._waiting: dict[asyncio.Future, ProcessPoolExecutor] = {}  # bodies in the helper, by pool
        self._retry_at = 0.0  # monotonic time before which a helper that could not start is not tried
        self._short = False  # its start failed on a passing shortage, said once: retries are quiet
        # a heap, by turn: (turn, arrival, answer, submit, json_bytes)
        self._queued: list[tuple[float, int, asyncio.Future, Callable[[], Future], int]] = []
        self._in_hand: list[Future] = []  # the bodies handed to the helper (two at most, see PIPELINE_BYTES)
        self._arrivals = itertools.count()  # ties in turn: arrival order

    async def parse_infer(
        self, body: bytes, header_length: str | None, model: str, version: str, timeout_s: float | None = None
    ) -> ParsedInfer:
        """:func:`~serving.protocol.v2_codec.parse_infer`, in the helper process for a large JSON part,
        held there to a deadline ``timeout_s`` (``--request-timeout-s``) from now; the model is then
        given what that leaves (``deadline_s``). A body parsed in place makes no deadline."""
        json_bytes = _json_bytes(body, header_length)
        if timeout_s is None or not self.offloads(json_bytes):
            return await self.call(json_bytes, parse_infer, body, header_length, model, version)
        deadline = Deadline.from_now(timeout_s)
        parsed = await self.call(
            json_bytes, parse_infer, body, header_length, model, version, deadline=deadline
        )
        request = parsed.request
        request.deadline_s = min(deadline.left(), request.deadline_s or timeout_s)
        return parsed

    def offloads(self, json_bytes: int) -> bool:
        """Whether a body of ``json_bytes`` of JSON is parsed in the helper (waiting its turn there)."""
        return bool(self.offload_bytes) and json_bytes >= self.offload_bytes

    async def encode_infer(self, response: InferResponse, parsed: ParsedInfer) -> tuple[bytes, int | None]:
        """:func:`~serving.protocol.v2_codec.encode_infer`, in the helper process for a large JSON part
        (the request's inputs, which encoding does not read, left behind)."""
        json_bytes = json_values(response, parsed) * JSON_VALUE_BYTES
        if not self.offload_bytes or json_bytes < self.offload_bytes:
            return encode_infer(response, parsed)
        slim = dataclasses.replace(parsed, request=dataclasses.replace(parsed.request, inputs={}))
        return await self.call(json_bytes, encode_infer, response, slim)

    async def call(
        self, json_bytes: int, parse: Callable[..., T], *args: Any, deadline: Deadline | None = None
    ) -> T:
        """``parse(*args)``: in place, or in the helper from ``offload_bytes`` of JSON up. ``parse`` is a
        module-level function (the helper imports it by name) whose result and errors pickle. A body
        in the helper is held to the request's ``deadline``: past it a 504, the body dropped from the
        helper's queue (one it parses already runs out). It waited its turn there for as long as the
        bodies before it took, the request's deadline starting only at the model's queue after it."""
        if not self.offloads(json_bytes):
            return parse(*args)
        pool = self._pool or await asyncio.to_thread(self._helper, self._closes)
        if pool is None:  # the app stopped meanwhile (no helper started for it), or none can start
            return parse(*args)
        try:
            if deadline is None:
                return await self._in_helper(pool, parse, args, json_bytes=json_bytes)
            due = time.monotonic() + deadline.left()  # the helper's clock (CLOCK_MONOTONIC, system-wide)
            return await self._within(
                deadline, self._in_helper(pool, parse, args, due, json_bytes), json_bytes
            )
        except BrokenProcessPool:  # the helper died (killed, out of memory): the next body starts another
            if self._pool is pool:
                self._pool = None
                # Drops its queues, and with them their named semaphores: the broken pool stayed
                # reachable (its calls' callbacks), so they were unlinked only at an exit the stop
                # signal skips, and the resource tracker warned of "leaked semaphore objects".
                pool.shutdown(wait=False, cancel_futures=True)
            log.error("the JSON parse process died; parsing this body in place")
            return parse(*args)

    async def _within(self, deadline: Deadline, answer: asyncio.Future, json_bytes: int) -> Any:
        """``answer``, or a 504 at ``deadline`` (``answer`` then cancelled: a body still queued is dropped)."""
        ahead = self._ahead_of(answer)  # bodies in the helper before this one (parsed or queued)
        timeout = asyncio.timeout_at(deadline.at)
        try:
            async with timeout:
                return await answer
        except (TimeoutError, _Late) as error:
            if isinstance(error, TimeoutError) and not timeout.expired():
                raise
            raise deadline.passed(
                "JSON parsing",
                f"for the JSON parse process ({json_bytes} bytes of JSON, {ahead} bodies before it there)",
            ) from None

    def _ahead_of(self, answer: asyncio.Future) -> int:
        """The bodies the helper takes before ``answer``'s: the one handed to it, and those queued with an
        earlier turn."""
        for turn, _, queued, *_ in self._queued:
            if queued is answer:
                return self._busy() + sum(
                    1 for other, _, body, *_ in self._queued if other < turn and not body.done()
                )
        return max(self._busy() - 1, 0)  # handed to the helper already: last (a body parsed before it)

    def _busy(self) -> int:
        """The bodies the helper has in hand (their work not done: parsed, failed or dropped), 0 to 2."""
        self._in_hand = [work for work in self._in_hand if not work.done()]
        return len(self._in_hand)

    def _in_helper(
        self,
        pool: ProcessPoolExecutor,
        parse: Callable[..., T],
        args: tuple,
        due: float | None = None,
        json_bytes: int = 0,
    ) -> asyncio.Future:
        """``parse(*args)`` in ``pool``'s helper, as a future of this loop; cancelling it drops a body
        still queued, and one past ``due`` (``time.monotonic()``) when its turn comes is not parsed
        (:func:`_unless_late`: the pool takes the next two bodies in hand before it is done with one,
        where a cancel no longer reaches them, and a body 504'd there was parsed for nobody). When
        the helper dies, every body waiting for it gets ``BrokenProcessPool``, here: Python 3.11's
        pool stops failing its queued calls at the first one cancelled (its thread dies of
        InvalidStateError), and the bodies behind it waited for ever, a client gone mid-parse and a
        killed helper enough to leave requests unanswered and their bytes held. The body waits its turn
        here first (:meth:`_hand_on`: smallest first, see :data:`ORDER_BYTES_S`)."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        handed: list[Future] = []

        def submit() -> Future:  # BrokenProcessPool where the pool is known broken already
            work = pool.submit(parse, *args) if due is None else pool.submit(_unless_late, due, parse, *args)
            handed.append(work)

            def settle(_: Any) -> None:  # on the pool's thread
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                    loop.call_soon_threadsafe(self._settle, answer, work, pool)

            work.add_done_callback(settle)
            return work

        def dropped(_: asyncio.Future) -> None:  # its client left or its deadline passed
            if answer.cancelled():
                if handed:
                    handed[0].cancel()  # a body the helper has not taken yet is dropped (_settle pops it)
                else:  # still queued here: dropped with its bytes
                    self._waiting.pop(answer, None)
                    self._queued = [entry for entry in self._queued if entry[2] is not answer]
                    heapq.heapify(self._queued)

        self._waiting[answer] = pool
        answer.add_done_callback(dropped)
        now = time.monotonic()
        # passed over for n s a MiB, but never for more than half of what its deadline leaves: a body of
        # 30 MiB or more under the 30 s default was otherwise passed over until its 504 while small
        # bodies kept the helper busy
        wait = json_bytes / ORDER_BYTES_S if due is None else min(json_bytes / ORDER_BYTES_S, (due - now) / 2)
        turn = now + max(0.0, wait)
        heapq.heappush(self._queued, (turn, next(self._arrivals), answer, submit, json_bytes))
        self._hand_on()
        return answer

    def _hand_on(self) -> None:
        """Hand the helper the queued body of the earliest turn, unless it has one in hand (or two, or one
        and that body is larger than :data:`PIPELINE_BYTES`): a body handed to the pool is out of reach
        (the pool moves it into its call queue), so the rest wait here."""
        while self._queued:
            busy = self._busy()
            if busy >= 2 or (busy and self._queued[0][4] > PIPELINE_BYTES):
                return  # (a small one goes in while the helper parses the one before it: PIPELINE_BYTES)
            answer, submit = heapq.heappop(self._queued)[2:4]
            if answer.done():  # cancelled, or failed with its helper
                continue
            try:
                self._in_hand.append(submit())
            except BaseException as error:  # BrokenProcessPool; RuntimeError: a pool shut down
                self._waiting.pop(answer, None)
                answer.set_exception(error)

    def _settle(self, answer: asyncio.Future, work: Future, pool: ProcessPoolExecutor) -> None:
        try:
            self._answer(answer, work, pool)
        finally:
            self._hand_on()

    def _answer(self, answer: asyncio.Future, work: Future, pool: ProcessPoolExecutor) -> None:
        self._waiting.pop(answer, None)
        if answer.done() or work.cancelled():
            return
        error = work.exception()
        if error is None:
            answer.set_result(work.result())
            return
        answer.set_exception(error)
        if isinstance(error, BrokenProcessPool):
            for waiting, its_pool in list(self._waiting.items()):
                if its_pool is pool:
                    del self._waiting[waiting]
                    if not waiting.done():
                        waiting.set_exception(BrokenProcessPool(str(error)))

    def _helper(self, closes: int) -> ProcessPoolExecutor | None:
        """The helper's pool, its process started: on a thread of its own, never the event loop's (the
        pool starts its process at its first call, and starting the forkserver, then the helper from it,
        held the loop 150-230 ms, every other request of the gateway waiting behind one large body).
        None where :meth:`close` came since the body asked (``closes`` then): a helper started after
        the app's stop was left running, its pool never shut down."""
        with self._starting:
            if self._closes != closes or (self._pool is None and time.monotonic() < self._retry_at):
                return None
            if self._pool is None:
                log.log(
                    logging.DEBUG if self._short else logging.INFO,
                    "starting the JSON parse process (bodies of %d bytes of JSON and more)",
                    self.offload_bytes,
                )
                context = multiprocessing.get_context("forkserver")
                try:  # its queues' semaphores are made in /dev/shm: ENOSPC where that is full
                    pool = ProcessPoolExecutor(
                        max_workers=1,
                        mp_context=context,
                        initializer=_helper_starts,
                        initargs=(applied_cpu_policy(),),
                    )
                except OSError as error:
                    self._cannot_start(error)
                    return None
                try:
                    pool.submit(int)  # starts the process here (its result, or failure, matters to nobody)
                except OSError as error:
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._cannot_start(error)
                    return None
                self._pool = pool
                if self._short:
                    self._short = False
                    log.info("the JSON parse process has started: large JSON bodies are parsed there again")
            return self._pool

    def _cannot_start(self, error: OSError) -> None:
        """Parse every body in place from now on, said once: the helper cannot start here (a shortage
        that passes, :data:`SHORT_NOW`, only for :data:`RETRY_S`, then it is tried again). Its
        forkserver listens on a Unix socket under TMPDIR (``pymp-*/listener-*``), and a TMPDIR longer than
        ~80 bytes passes the 107 bytes a socket path may have (Python 3.14 falls back to /tmp): every
        large body was answered 500 ``internal error: OSError``, the start tried again at each one. Its
        queues' semaphores are made in /dev/shm, and a full one (a container's 64 MiB) did the same."""
        if error.errno in SHORT_NOW:
            self._retry_at = time.monotonic() + RETRY_S
            # one line a shortage, not one each RETRY_S while it lasts (a pids limit the gateway stays at)
            log.log(
                logging.DEBUG if self._short else logging.WARNING,
                "the JSON parse process cannot start now (%s%s): large JSON bodies are parsed in place, "
                "on the event loop, for %.0f s, then it is tried again",
                error.strerror or error,
                _limit_note(error.errno),
                RETRY_S,
            )
            self._short = True
            return
        self.offload_bytes = 0
        where, advice = "", ""
        if "too long" in str(error):
            where, advice = f"; TMPDIR={tempfile.gettempdir()}", ": set TMPDIR to a shorter directory"
        elif error.errno == errno.ENOSPC:
            where = f"; /dev/shm, where its semaphores are made, is full{_free_note('/dev/shm')}"
            advice = ": give /dev/shm more room (docker run --shm-size, a memory-backed emptyDir)"
        log.error(
            "the JSON parse process cannot start (%s%s): large JSON bodies are parsed in place, on the "
            "event loop, from now on (the other requests wait behind each)%s",
            error.strerror or error,
            where,
            advice,
        )

    def close(self) -> None:
        """Stop the helper process, if one was started, and wait for it to end. ``shutdown(wait=False)``
        alone left it running for ever once the gateway exited: the pool's thread that sends a worker
        its stop goes with the process, and the worker, which holds both ends of its call queue's
        pipe, never reads an end of file. A body still being parsed is the stopping gateway's. A helper
        starting on a thread is waited for (the lock), then stopped as well."""
        with self._starting:
            pool, self._pool = self._pool, None
            self._closes += 1
        if pool is None:
            return
        # CPython's table of the pool's processes (3.14 has terminate_workers): ended first, so the
        # wait is not for a body's parse
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


class _Late(Exception):
    """The helper's answer for a body whose request's deadline passed before its turn came."""


def _unless_late(due: float, parse: Callable[..., T], *args: Any) -> T:
    """In the helper: ``parse(*args)``, unless ``due`` (``time.monotonic()``, which every process of the
    machine shares) passed while the body waited: its request is answered 504 already."""
    if time.monotonic() >= due:
        raise _Late()
    return parse(*args)


def _helper_starts(cpu_policy: CpuPolicy | None = None) -> None:
    """The helper's first act: it ignores Ctrl-C, it ends when its gateway process ends, and it runs
    under the gateway's ``cpu_policy``, not the one it inherited (the event loop's, under ``SCHED_BATCH``
    while a translation decoded: every large body parsed under it since, with ``--cpu-policy auto``).

    A terminal's Ctrl-C reaches every process of its group: the helper died of KeyboardInterrupt
    mid-drain and printed its traceback into the gateway's log (the gateway stops it itself,
    :meth:`JsonOffload.close`). And a gateway killed (SIGKILL, the OOM killer, a worker of several)
    left the helper running for ever, blocked on a queue it holds both ends of, and with it the
    forkserver and resource tracker it keeps alive (and the semaphores that tracker keeps)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cpu_policy is not None:
        set_cpu_policy(cpu_policy)
    gateway = multiprocessing.parent_process()  # the process that asked for the helper, not the forkserver
    if gateway is not None:
        threading.Thread(target=_end_with, args=(gateway,), name="gateway-watch", daemon=True).start()


def _end_with(gateway: Any) -> None:
    """Wait for ``gateway``'s end (its sentinel: a pipe only that process writes to), then end at once."""
    gateway.join()
    os._exit(0)


def _json_bytes(body: bytes, header_length: str | None) -> int:
    """The length of the body's JSON part (the whole body without the binary extension's header; a
    malformed header length counts the whole body, and ``parse_infer`` names the error)."""
    size = None if header_length is None else stated_size(header_length.strip())
    return len(body) if size is None else min(size, len(body))


def _limit_note(number: int | None) -> str:
    """``; the open-file limit is N`` for EMFILE (the process's ``ulimit -n``), else nothing."""
    if number != errno.EMFILE:
        return ""
    import resource

    return f"; the process's open-file limit is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"


def _free_note(where: str) -> str:
    """`` (N MiB free of M)`` for directory ``where``, or nothing where its filesystem cannot be read."""
    space = disk_space(where)
    return "" if space is None else f" ({space[0] >> 20} MiB free of {space[1] >> 20})"
