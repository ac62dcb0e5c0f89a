"""Iteration-level decoding scheduler: the beams of every in-flight request share each decoder step.

One asyncio task per scheduler drives the loop over one persistent :class:`serving.decoding.stepper.DecodeBatch`.
Between two decoder steps it admits waiting sentences while the row budget allows (their encoder run
batched in one call, joined to the batch at once), then, in one call to its worker thread, removes the
rows of requests that timed out or whose client left and runs one decoder step plus one vectorized
search step over every live row. Sentences that finish leave at once; a request is answered when its
last sentence is done. A sentence whose search fails (NaN log-probs) fails its own request only. The
worker thread does every array operation, so the event loop keeps accepting requests while a step runs.
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
from serving.errors import DeadlineExceeded, Overloaded, ServingError, Unavailable, UnprocessableInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    """Caps of one translator's loop."""

    max_rows: int = 256  # decoder rows per step (a sentence reserves beam_size rows)
    max_queue: int = 128  # requests waiting for admission before 429
    max_encoder_batch: int = 64  # sentences per encoder call
    timeout_s: float = 30.0  # default per-request deadline (504 after it)
    retry_after_s: float = 1.0  # sent with 429 / 503
    workers: int = 2  # decode workers per translator (2 threads of 1 on 2 cores: 1.6x of one, measured)

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_queue", "max_encoder_batch", "workers"):
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
        self._batch = stepper.DecodeBatch(self.spec)  # keys: (job, index of the sentence in the job)
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
        while (self._waiting or self._batch.size) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for job in {*self._running_jobs(), *self._waiting}:
            _fail(job, Unavailable(f"translator {self.name!r} is shutting down"))
        self._batch = stepper.DecodeBatch(self.spec)
        self._waiting.clear()
        if self._own_executor:
            self._executor.shutdown(wait=True)

    @property
    def active_rows(self) -> int:
        """Decoder rows the next step will run."""
        return self._batch.live_rows

    @property
    def load(self) -> int:
        """Rows reserved by running sentences plus those of waiting requests (for choosing a worker)."""
        waiting = sum((len(j.sources) - j.next_source) * j.config.beam_size for j in self._waiting)
        return self._reserved_rows() + waiting

    def _running_jobs(self) -> set[_Job]:
        return {job for job, _ in self._batch.keys}

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
        stepper.check_config(self.spec, config)
        if config.beam_size > self.config.max_rows:
            raise ValueError(
                f"beam_size={config.beam_size} exceeds the scheduler's max_rows={self.config.max_rows}"
            )

    # --- the loop ---------------------------------------------------------------------------------

    async def _loop(self) -> None:
        """Admit, step, retire; sleep only when nothing is in flight or waiting."""
        while True:
            self._expire()
            if not self._batch.size and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._admit()
                if self._batch.size:
                    await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing model call fails its requests, not the loop
                log.exception("translator %s: decoding failed", self.name)
                error = ServingError(f"translator {self.name!r} failed: {type(exc).__name__}: {exc}")
                for job in self._running_jobs():
                    _fail(job, error)
                    self._observe_done(job, "failure")
                self._batch = stepper.DecodeBatch(self.spec)

    def _expire(self) -> None:
        """Fail requests past their deadline; forget waiting ones already answered (their rows leave at
        the next step)."""
        now = time.monotonic()
        for job in self._running_jobs() | set(self._waiting):
            if not job.finished and now >= job.deadline:
                _fail(job, DeadlineExceeded("translation did not finish before its deadline"))
                self._observe_done(job, "timeout")
        self._waiting = deque(j for j in self._waiting if not j.finished)

    def _reserved_rows(self) -> int:
        beams = self._batch.beams
        return int(beams.beam.sum()) if beams is not None else 0

    async def _admit(self) -> None:
        """Encode waiting sentences (FIFO) that fit the row budget, in one encoder call, and join them."""
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
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._encode_and_join, picked)
        except Exception as exc:  # noqa: BLE001 - the encoder failing fails these requests only
            log.exception("translator %s: encoder failed", self.name)
            for job in {job for job, _ in picked}:
                _fail(job, ServingError(f"translator {self.name!r} encoder failed: {exc}"))
                self._observe_done(job, "failure")

    def _encode_and_join(self, picked: list[tuple[_Job, int]]) -> None:
        sources = [job.sources[i] for job, i in picked]
        encoded = self.run_encoder(stepper.encoder_inputs(self.spec, sources))  # {name: [n, ...]}
        configs = [job.config for job, _ in picked]
        self._batch.join(picked, encoded, configs, [len(s) + 1 for s in sources])

    def _leave_and_step(self) -> tuple[int, int, list[stepper.Finished]]:
        """In the worker thread: drop the rows of answered requests, then one decoder + search step.

        Returns the rows and requests the step ran, and the sentences that left."""
        self._batch.remove(np.array([job.finished for job, _ in self._batch.keys], dtype=bool))
        rows, requests = self._batch.live_rows, len(self._running_jobs())
        return rows, requests, self._batch.step(self.run_decoder)

    async def _step(self) -> None:
        """One decoder call over every live row, then answer the requests whose sentences all finished."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        rows, requests, finished = await loop.run_in_executor(self._executor, self._leave_and_step)
        if self.observer is not None:
            self.observer.observe_decode_step(self.name, rows, requests, time.monotonic() - started)
        for done in finished:
            job, index = done.key
            if job.finished:
                continue
            if done.error is not None:  # this sentence's own failure: its request alone fails
                _fail(job, UnprocessableInput(f"text {index}: {done.error}; the request cannot be decoded"))
                self._observe_done(job, "failure")
                continue
            job.results[index] = done.hypotheses
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
