"""Iteration-level decoding scheduler: the beams of every in-flight request share each decoder step.

One asyncio task per translator drives the loop. Between two decoder steps it drops requests that
timed out or whose client left (their rows simply are not gathered into the next call), admits waiting
sentences while the row budget allows (their encoder run batched in one call), then runs one decoder
step over the live rows of all admitted sentences (:func:`serving.decoding.stepper.step_sentences`: per-sentence
``np.take`` by beam origin, caches left-padded and sources right-padded per the step spec, so every
row computes exactly what it would alone). Sentences that finish leave at once; a request is answered
when its last sentence is done. Encoder and decoder calls run in a worker thread, so the event loop
keeps accepting requests while a step runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from serving.decoding import beam_search as bs
from serving.decoding import stepper
from serving.errors import DeadlineExceeded, Overloaded, ServingError, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    """Caps of one translator's loop."""

    max_rows: int = 256  # decoder rows per step (a sentence reserves beam_size rows)
    max_queue: int = 128  # requests waiting for admission before 429
    max_encoder_batch: int = 64  # sentences per encoder call
    timeout_s: float = 30.0  # default per-request deadline (504 after it)
    retry_after_s: float = 1.0  # sent with 429 / 503

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_queue", "max_encoder_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"SchedulerConfig.timeout_s must be > 0, got {self.timeout_s}")


class DecodeObserver(Protocol):
    """Where the loop reports what it does (``serving.metrics.GatewayMetrics`` implements it)."""

    def observe_decode_step(self, model: str, rows: int, requests: int, seconds: float) -> None: ...

    def observe_translation(self, model: str, seconds: float, tokens: int, outcome: str) -> None: ...


@dataclass(eq=False)
class _Job:
    """One submitted request: its sentences, their results and the future its caller awaits."""

    sources: list[list[int]]
    config: bs.BeamConfig
    future: asyncio.Future
    deadline: float
    started: float = field(default_factory=time.monotonic)
    next_source: int = 0  # sources[:next_source] were admitted
    results: dict[int, list[bs.Hypothesis]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.future.done()


@dataclass(eq=False)
class _Slot:
    """A sentence in flight: its job, index in the job and stepper state."""

    job: _Job
    index: int
    sentence: stepper.Sentence


class DecodingScheduler:
    """Batch the decoder steps of all in-flight sentences of one translator (see the module docstring)."""

    def __init__(
        self,
        name: str,
        spec: dict[str, Any] | stepper.StepSpec,
        run_encoder: stepper.Runner,
        run_decoder: stepper.Runner,
        config: SchedulerConfig | None = None,
        *,
        observer: DecodeObserver | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.name = name
        self.spec = stepper.parse_step_spec(spec)
        self.run_encoder, self.run_decoder = run_encoder, run_decoder
        self.config = config or SchedulerConfig()
        self.observer = observer
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"kiln-decode-{name}")
        self._waiting: deque[_Job] = deque()
        self._slots: list[_Slot] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    # --- public API -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loop on the running event loop (idempotent)."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name=f"kiln-scheduler-{self.name}")

    async def stop(self, grace_s: float = 30.0) -> None:
        """Let in-flight and waiting requests finish for up to ``grace_s``, then fail the rest with 503."""
        self._stopping = True
        deadline = time.monotonic() + grace_s
        while (self._waiting or self._slots) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for job in {*(s.job for s in self._slots), *self._waiting}:
            _fail(job, Unavailable(f"translator {self.name!r} is shutting down"))
        self._slots.clear()
        self._waiting.clear()
        if self._own_executor:
            self._executor.shutdown(wait=True)

    @property
    def active_rows(self) -> int:
        """Decoder rows the next step will run."""
        return sum(bs.live_rows(s.sentence.beam) for s in self._slots)

    @property
    def queued(self) -> int:
        """Requests not yet fully admitted."""
        return len(self._waiting)

    async def submit(
        self, sources: Sequence[Sequence[int]], config: bs.BeamConfig, timeout_s: float | None = None
    ) -> list[list[bs.Hypothesis]]:
        """Beam-search each source (token ids without EOS); 429 when the queue is full, 504 after timeout."""
        if self._task is None or self._stopping:
            raise Unavailable(
                f"translator {self.name!r} is not running", retry_after=self.config.retry_after_s
            )
        self._check(config)
        if len(self._waiting) >= self.config.max_queue:
            raise Overloaded(
                f"translator {self.name!r}: {len(self._waiting)} requests already waiting; retry later",
                retry_after=self.config.retry_after_s,
            )
        timeout = timeout_s if timeout_s is not None else self.config.timeout_s
        job = _Job(
            sources=[list(s) for s in sources],
            config=config,
            future=asyncio.get_running_loop().create_future(),
            deadline=time.monotonic() + timeout,
        )
        if not job.sources:
            return []
        self._waiting.append(job)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            _fail(job, DeadlineExceeded(f"translation did not finish within {timeout:g}s"))
            self._observe_done(job, "timeout")
            raise job.future.exception() from None
        except asyncio.CancelledError:  # the client went away: free its rows at the next step
            _fail(job, Unavailable("request cancelled"))
            raise

    def _check(self, config: bs.BeamConfig) -> None:
        if (config.eos_id, config.bos_id) != (self.spec.eos_id, self.spec.bos_id):
            raise ValueError(
                f"BeamConfig eos/bos ({config.eos_id}, {config.bos_id}) differ from the model's "
                f"({self.spec.eos_id}, {self.spec.bos_id})"
            )
        if config.beam_size > self.config.max_rows:
            raise ValueError(
                f"beam_size={config.beam_size} exceeds the scheduler's max_rows={self.config.max_rows}"
            )
        limit = self.spec.max_positions
        if limit is not None and config.max_length > limit:
            raise ValueError(f"max_length={config.max_length} exceeds the model's max_positions={limit}")

    # --- the loop ---------------------------------------------------------------------------------

    async def _loop(self) -> None:
        """Admit, step, retire; sleep only when nothing is in flight or waiting."""
        while True:
            self._drop_finished()
            if not self._slots and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._admit()
                if self._slots:
                    await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing model call fails its requests, not the loop
                log.exception("translator %s: decoding failed", self.name)
                error = ServingError(f"translator {self.name!r} failed: {type(exc).__name__}: {exc}")
                for job in {s.job for s in self._slots}:
                    _fail(job, error)
                    self._observe_done(job, "failure")
                self._slots.clear()

    def _drop_finished(self) -> None:
        """Forget requests answered, cancelled or past their deadline (their rows leave the batch)."""
        now = time.monotonic()
        for job in {s.job for s in self._slots} | set(self._waiting):
            if not job.finished and now >= job.deadline:
                _fail(job, DeadlineExceeded("translation did not finish before its deadline"))
                self._observe_done(job, "timeout")
        self._slots = [s for s in self._slots if not s.job.finished]
        self._waiting = deque(j for j in self._waiting if not j.finished)

    def _reserved_rows(self) -> int:
        return sum(s.job.config.beam_size for s in self._slots)

    async def _admit(self) -> None:
        """Encode waiting sentences (FIFO) that fit the row budget, in one encoder call, and add them."""
        budget = self.config.max_rows - self._reserved_rows()
        picked: list[tuple[_Job, int]] = []
        while self._waiting and len(picked) < self.config.max_encoder_batch:
            job = self._waiting[0]
            if job.config.beam_size > budget:
                break
            picked.append((job, job.next_source))
            budget -= job.config.beam_size
            job.next_source += 1
            if job.next_source == len(job.sources):
                self._waiting.popleft()
        if not picked:
            return
        sources = [job.sources[i] for job, i in picked]
        loop = asyncio.get_running_loop()
        try:
            encoded = await loop.run_in_executor(self._executor, self._encode, sources)  # {name: [n, ...]}
        except Exception as exc:  # noqa: BLE001 - the encoder failing fails these requests only
            log.exception("translator %s: encoder failed", self.name)
            for job in {job for job, _ in picked}:
                _fail(job, ServingError(f"translator {self.name!r} encoder failed: {exc}"))
                self._observe_done(job, "failure")
            return
        for position, (job, index) in enumerate(picked):
            one = {name: value[position : position + 1] for name, value in encoded.items()}
            (sentence,) = stepper.start_sentences(self.spec, one, job.config)
            self._slots.append(_Slot(job, index, sentence))

    def _encode(self, sources: list[list[int]]) -> dict[str, np.ndarray]:
        return self.run_encoder(stepper.encoder_inputs(self.spec, sources))

    async def _step(self) -> None:
        """One decoder call over every live row, then retire the sentences that finished."""
        slots = list(self._slots)
        rows = sum(bs.live_rows(s.sentence.beam) for s in slots)
        requests = len({id(s.job) for s in slots})
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        sentences = await loop.run_in_executor(
            self._executor, stepper.step_sentences, self.spec, self.run_decoder, [s.sentence for s in slots]
        )
        if self.observer is not None:
            self.observer.observe_decode_step(self.name, rows, requests, time.monotonic() - started)
        for slot, sentence in zip(slots, sentences, strict=True):
            slot.sentence = sentence
        self._retire([s for s in slots if s.sentence.done])

    def _retire(self, done: list[_Slot]) -> None:
        """Record finished sentences; answer requests whose every sentence is done."""
        if not done:
            return
        finished = set(map(id, done))
        self._slots = [s for s in self._slots if id(s) not in finished]
        for slot in done:
            job = slot.job
            if job.finished:
                continue
            job.results[slot.index] = bs.finalize(slot.sentence.beam)
            if len(job.results) == len(job.sources):
                job.future.set_result([job.results[i] for i in range(len(job.sources))])
                self._observe_done(job, "success")

    def _observe_done(self, job: _Job, outcome: str) -> None:
        if self.observer is None:
            return
        tokens = sum(len(h.tokens) for hyps in job.results.values() for h in hyps)
        self.observer.observe_translation(self.name, time.monotonic() - job.started, tokens, outcome)


def _fail(job: _Job, error: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(error)
        job.future.exception()  # mark retrieved: nobody may await a request its client abandoned
