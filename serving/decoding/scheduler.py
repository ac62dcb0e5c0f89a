"""Iteration-level decoding scheduler: the beams of every in-flight request share each decoder step.

One decode thread per scheduler runs the loop over one persistent
:class:`serving.decoding.stepper.DecodeBatch`, without waiting on the event loop between steps: it
admits waiting sentences while the row budget allows (their encoder run batched in one call, joined to
the batch at once; into a running batch only once enough wait or the oldest has waited a few steps,
see :mod:`serving.decoding.admission`), removes the rows of requests that timed out or whose client
left, and runs one decoder step plus one vectorized search step over every live row. Sentences that
finish leave at once; a request is answered (on the event loop, thread-safely) when its last sentence
is done. A sentence whose search fails (NaN log-probs) fails its own request only; a failing model call
fails the requests in the batch, and the loop keeps serving. Its caps and the observer it reports to
are in :mod:`serving.decoding.scheduler_config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.decoding import beam_search as bs
from serving.decoding import native, step_spec, stepper
from serving.decoding.admission import Job, fraction_waiting, oldest_queued_step, pick, ready_to_admit
from serving.decoding.native_decoder import MAX_STEPS
from serving.decoding.scheduler_config import DecodeObserver, SchedulerConfig
from serving.errors import (
    DeadlineExceeded,
    ModelNotFound,
    Overloaded,
    ServingError,
    Unavailable,
    UnprocessableInput,
    seconds_text,
)
from serving.execution.shared_weights import return_freed_memory
from serving.threads import BusyLoopPolicy, busy_loop_policy, name_os_thread, os_name

log = logging.getLogger(__name__)


class DecodingScheduler:
    """Batch the decoder steps of all in-flight sentences of one translator (see the module docstring)."""

    def __init__(
        self,
        name: str,
        spec: dict[str, Any] | step_spec.StepSpec,
        run_encoder: step_spec.Runner,
        run_decoder: step_spec.Runner,
        config: SchedulerConfig | None = None,
        *,
        observer: DecodeObserver | None = None,
        model: str | None = None,
        thread_name: str | None = None,
    ) -> None:
        self.name = name
        # what the OS, top -H and profilers call its thread: distinct within Linux's 15 bytes where the
        # translator gives one (kiln-decode-<name> kept 3 bytes of every translator's name)
        self.thread_name = os_name(thread_name or f"kiln-decode-{name}")
        self.model = model or name  # what the observer is told: the translator's, for every worker
        self.spec = step_spec.parse_step_spec(spec)
        self.run_encoder, self.run_decoder = run_encoder, run_decoder
        self.indexed = step_spec.takes_indexed_rows(self.spec, run_decoder)  # rows over an encoder store
        self.config = config or SchedulerConfig()
        self.observer = observer
        self._lock = threading.Lock()  # guards _waiting
        self._waiting: deque[Job] = deque()
        self._wake = threading.Event()
        # set when a request is queued: a compiled multi-step call then returns after its current step
        self._stop = np.zeros(1, dtype=np.int64)
        self._batch = self._new_batch()  # decode thread only; keys: (job, sentence index)
        self._reserved = 0  # rows reserved by the batch's sentences (written by the decode thread)
        # sentences taken off the queue whose encoder call runs, not reserved yet (decode thread): a
        # stop's grace waits for them too (it saw nothing waiting or reserved, and answered them 503)
        self._admitting = False
        self._steps = 0  # decoder steps run (written by the decode thread)
        # failures of a server that cannot serve now, logged since the last call that worked (decode
        # thread): a Triton that is down failed every batch, a warning each
        self._outage_said: set[str] = set()
        self._left = 0  # sentences that left the batch at the last step (decode thread)
        self._grown = False  # steps ran since the decode state was last released (decode thread)
        self.releases = 0  # idle spells that released decode state (decode thread; tests, logs)
        self._thread: threading.Thread | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._loop_policy: BusyLoopPolicy | None = None
        self._stopping = self._halt = False
        self.died = ""  # why the decode thread ended unasked for good ("" while it runs or restarts)
        self.restarting = ""  # why it died, while a restart is pending ("" while it serves)
        self._deaths: deque[float] = deque()  # when it died, within the restart window (decode thread)

    # --- public API (event loop) ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the decode thread, answering on the running event loop (idempotent); the compiled beam
        step is built (once per machine, ~0.5 s) or found here, not on the first request."""
        await asyncio.to_thread(native.load)
        await asyncio.to_thread(self._batch.prepare, self.config.max_rows)
        if self._thread is None:
            self._event_loop = asyncio.get_running_loop()
            self._loop_policy = (
                busy_loop_policy(threading.get_native_id()) if self.config.busy_loop_policy else None
            )
            self._stopping = self._halt = False
            self.died = self.restarting = ""
            self._deaths.clear()
            self._thread = threading.Thread(target=self._run, name=f"kiln-decode-{self.name}", daemon=True)
            self._thread.start()

    async def stop(self, grace_s: float = 30.0) -> None:
        """Let in-flight and waiting requests finish for up to ``grace_s``, then fail the rest with 503;
        a model call still running then is cancelled where its runner can be (a hung Triton's)."""
        self._stopping = True
        deadline = time.monotonic() + grace_s
        while (self._waiting or self._admitting or self._reserved) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._thread is not None:
            self._halt = True
            self._wake.set()
            left = max(deadline - time.monotonic(), CANCEL_FLOOR_S)  # an idle thread's wake-up, at grace 0
            await asyncio.to_thread(self._thread.join, left)
            if self._thread.is_alive():  # in a call past the grace: a hung Triton held it until its
                self._cancel_calls()  # client timeout (--request-timeout-s); ended where it can be
                await asyncio.to_thread(self._thread.join)
            self._thread = None
        with self._lock:
            left = {*self._running_jobs(), *self._waiting}
            self._waiting.clear()
        for job in left:
            self._answer(job, Unavailable(f"translator {self.name!r} is shutting down"), "failure")
        self._batch, self._reserved = self._new_batch(), 0

    def _cancel_calls(self) -> None:
        """End the encoder and decoder calls in flight, where a runner can (its ``cancel``: the Triton
        runner's closes its channel); an ONNX Runtime call has none and ends on its own."""
        cancels = [getattr(r, "cancel", None) for r in (self.run_encoder, self.run_decoder)]
        if any(cancels):
            log.warning("translator %s: a model call outlived the shutdown grace: cancelled", self.name)
        for cancel in filter(None, cancels):
            cancel()

    def _new_batch(self) -> stepper.DecodeBatch:
        batch = stepper.decode_batch(self.spec, self.indexed, self.run_decoder)
        batch.stop = self._stop
        batch.hold_steps = self.config.finish_hold_steps
        return batch

    @property
    def active_rows(self) -> int:
        """Decoder rows the next step will run."""
        return self._batch.live_rows

    @property
    def load(self) -> int:
        """Rows reserved by running sentences plus those of waiting requests (for choosing a worker)."""
        waiting = sum((len(j.sources) - j.next_source) * j.config.beam_size for j in list(self._waiting))
        return self._reserved + waiting

    @property
    def queued(self) -> int:
        """Requests not yet fully admitted."""
        return len(self._waiting)

    async def submit(
        self,
        sources: Sequence[Sequence[int]],
        config: bs.BeamConfig,
        timeout_s: float | None = None,
        version: str = "",
    ) -> list[list[bs.Hypothesis]]:
        """Beam-search each source (token ids without EOS); 429 when the queue is full, 504 after timeout.
        ``version``: the translator's version the request named, reported with its answer (every
        version decodes alike: a translator's versions share its encoder and decoder entries)."""
        if self._thread is None or self._stopping or self.died:
            raise self._not_running()
        self._check(config)
        timeout = timeout_s if timeout_s is not None else self.config.timeout_s
        job = Job(
            sources=[list(s) for s in sources],
            config=config,
            future=asyncio.get_running_loop().create_future(),
            deadline=time.monotonic() + timeout,
            queued_step=self._steps,
            version=version,
        )
        if not job.sources:
            return []
        with self._lock:
            if self.died:  # it stopped since the look above: nothing would take the request
                raise self._not_running()
            if len(self._waiting) >= self.config.max_queue:
                raise Overloaded(
                    f"translator {self.name!r}: {len(self._waiting)} requests already waiting; retry later",
                    retry_after=self.config.retry_after_s,
                )
            self._waiting.append(job)
            # enough wait (or the batch is idle): it joins after the step in flight (see _step)
            if fraction_waiting(self._waiting, self._batch.size, self.config):
                self._stop[0] = 1
        self._wake.set()
        # the deadline as one timer on the loop, awaiting the future itself (wait_for + shield built a
        # task, two more futures and their callbacks per request)
        expiry = asyncio.get_running_loop().call_later(timeout, self._expire_job, job, timeout)
        try:
            return await job.future
        except asyncio.CancelledError:  # the client went away (the future is cancelled with it): its
            self._answer(job, Unavailable("request cancelled"), None)  # rows leave at the next step
            self._forget(job)
            raise
        finally:
            expiry.cancel()

    def _not_running(self) -> Unavailable:
        stopped = f": its decode worker stopped ({self.died})" if self.died else ""
        return Unavailable(
            f"translator {self.name!r} is not running{stopped}", retry_after=self.config.retry_after_s
        )

    def _expire_job(self, job: Job, timeout: float) -> None:
        """On the event loop, at a request's deadline: 504 unless answered (its rows then leave)."""
        late = DeadlineExceeded(f"translation did not finish within {seconds_text(timeout)}s")
        self._answer(job, late, "timeout")
        self._forget(job)

    def _forget(self, job: Job) -> None:
        """On the event loop: take an abandoned request off the queue now, not when the decode thread
        next looks (after the step in flight): until then it still counted against ``max_queue``, a
        429 for a client that came after it had gone, and in ``load`` for choosing a worker. Its rows
        already in the batch leave at the next step (it is closed)."""
        with self._lock:
            if job in self._waiting:  # else admitted whole already
                self._waiting.remove(job)

    def _check(self, config: bs.BeamConfig) -> None:
        step_spec.check_config(self.spec, config)
        if config.beam_size > self.config.max_rows:
            raise ValueError(
                f"beam_size={config.beam_size} exceeds the scheduler's max_rows={self.config.max_rows}"
            )

    def _answer(self, job: Job, result: Any, outcome: str | None) -> None:
        """On the event loop: settle the request once (a list of results or an exception)."""
        job.closed = True
        if job.future.done():
            return
        if isinstance(result, BaseException):
            job.future.set_exception(result)
            job.future.exception()  # mark retrieved: nobody may await a request its client abandoned
        else:
            job.future.set_result(result)
        if outcome is not None and self.observer is not None:
            tokens = sum(len(h.tokens) for hyps in job.results.values() for h in hyps)
            seconds = time.monotonic() - job.started
            queued = None if job.admitted is None else job.admitted - job.started
            self.observer.observe_translation(
                self.model, seconds, tokens, outcome, len(job.sources), queued, version=job.version
            )

    def _post(self, job: Job, result: Any, outcome: str) -> None:
        """From the decode thread: answer on the event loop."""
        self._post_all([(job, result, outcome)])

    def _post_all(self, answers: list[tuple[Job, Any, str]]) -> None:
        """From the decode thread: settle ``answers`` (job, result, outcome) on the event loop, in one
        wake-up of it (at c=32 a step finishes ~3 requests: one self-pipe write instead of three)."""
        if not answers:
            return
        for job, _, _ in answers:
            job.closed = True
        self._event_loop.call_soon_threadsafe(self._answer_all, answers)

    def _answer_all(self, answers: list[tuple[Job, Any, str]]) -> None:
        for job, result, outcome in answers:
            self._answer(job, result, outcome)

    # --- the decode thread ------------------------------------------------------------------------

    def _running_jobs(self) -> set[Job]:
        return {job for job, _ in self._batch.keys}

    def _run(self) -> None:
        """The decode thread: :meth:`_serve` until stopped. An error that escapes it (its own handler's
        included) ends that run, not the worker: :meth:`_died` answers the requests of its batch 503
        and, within the restart policy (``SchedulerConfig.worker_restarts``), the worker serves again
        after a backoff on a fresh batch (:meth:`_fresh_state`), same thread, sessions and queue; past
        it, it stays down. Before, one death ended the worker until the gateway restarted."""
        while True:
            try:
                if self.restarting:
                    self._fresh_state()
                    log.warning(
                        "translator %s: its decode worker restarted (it had died: %s)",
                        self.name,
                        self.restarting,
                    )
                    self.restarting = ""
                self._serve()
                return
            except BaseException as exc:  # noqa: BLE001 - answered (and restarted) below
                delay = self._died(exc)
            if delay is None or not self._backoff(delay):
                return

    def _serve(self) -> None:
        """Admit, step, retire; sleep only when nothing is in flight or waiting, until stopped."""
        policy, busy = self._loop_policy, False
        try:
            name_os_thread(self.thread_name)
            while not self._halt:
                if not self._batch.size and not self._waiting:
                    if busy:
                        policy.idle()
                        busy = False
                    idle_s = self.config.release_idle_s if self._grown else None
                    if self._wake.wait(idle_s):
                        self._wake.clear()
                    else:  # idle that long: what the last requests grew goes back
                        self._release_idle()
                    continue
                if policy is not None and not busy:
                    policy.busy()
                    busy = True
                try:
                    self._expire()
                    self._admit()
                    if self._batch.size:
                        self._step()
                        self._outage_said.clear()
                except Exception as exc:  # noqa: BLE001 - a failing model call fails its requests, not the loop
                    _log_failure(exc, self._outage_said, "translator %s: decoding failed", self.name)
                    error = _failure(
                        exc,
                        f"translator {self.name!r} failed: {type(exc).__name__}: {exc}",
                        self.name,
                        self.config.retry_after_s,
                    )
                    failed = self._running_jobs()
                    self._batch, self._reserved = self._new_batch(), 0  # before the answers (see _step)
                    self._post_all([(job, error, "failure") for job in failed])
        finally:
            if busy:
                policy.idle()

    def _died(self, exc: BaseException) -> float | None:
        """A run of the decode thread ended on ``exc``: the requests of its batch are answered 503 naming
        it (they were mid-batch). Within the restart policy the worker restarts: the seconds to wait
        are returned, waiting requests stay queued for it, and new ones are still taken. Else (more
        than ``worker_restarts`` deaths within ``restart_window_s``, or the worker stopping) None: it
        stays down, its waiting requests are answered 503 too and new ones refused (:meth:`submit`);
        its translator's other workers serve on, and a translator left with none is not ready, nor
        live (the liveness probe restarts the gateway)."""
        reason = f"{type(exc).__name__}: {exc}"
        cfg = self.config
        now = time.monotonic()
        while self._deaths and now - self._deaths[0] > cfg.restart_window_s:
            self._deaths.popleft()
        self._deaths.append(now)
        deaths = len(self._deaths)
        restart = not self._halt and deaths <= cfg.worker_restarts
        if restart:
            delay = min(cfg.restart_backoff_s * 2 ** (deaths - 1), cfg.restart_backoff_max_s)
            self.restarting = reason
            log.error(
                "translator %s: its decode worker died: %s; restarting it in %.2g s (%d of %d restarts "
                "within %g s)",
                self.name,
                reason,
                delay,
                deaths,
                cfg.worker_restarts,
                cfg.restart_window_s,
                exc_info=exc,
            )
            error = Unavailable(  # the worker, another one or another replica serves a retry
                f"translator {self.name!r}: its decode worker died ({reason}); it is restarting",
                retry_after=cfg.retry_after_s,
            )
        else:
            delay = None
            if self._halt:
                self.died = reason
            elif cfg.worker_restarts:
                self.died = (
                    f"{reason} (it died {deaths} times within {cfg.restart_window_s:g} s: not restarted)"
                )
            else:
                self.died = f"{reason} (worker restarts are off)"
            self.restarting = ""
            log.error("translator %s: its decode worker stopped: %s", self.name, self.died, exc_info=exc)
            error = Unavailable(  # another worker or replica (the liveness probe restarts this one) serves
                f"translator {self.name!r}: its decode worker stopped ({self.died})",
                retry_after=cfg.retry_after_s,
            )
        report = getattr(self.observer, "observe_worker_death", None)
        if report is not None:
            with contextlib.suppress(Exception):  # a metric is no reason to leave the worker down
                report(self.model, "restarted" if restart else "stopped")
        with self._lock:
            try:
                left = self._running_jobs()
            except Exception:  # noqa: BLE001 - a batch too broken to list: a fresh one answers no more
                left = set()
            if not restart:
                left |= set(self._waiting)
                self._waiting.clear()
            elif left:  # a request partly admitted (texts still waiting) is answered now: not waiting
                self._waiting = deque(job for job in self._waiting if job not in left)
        self._reserved = 0  # nothing runs here now: a stop has only the waiting requests to wait for
        with contextlib.suppress(RuntimeError):  # the event loop closed: nobody waits for them
            self._post_all([(job, error, "failure") for job in left])
        return delay

    def _backoff(self, delay: float) -> bool:
        """Wait ``delay`` seconds before a restart; False where the worker was stopped meanwhile (no
        restart after a stop: the thread ends, and :meth:`stop` joins it at once)."""
        deadline = time.monotonic() + delay
        while not self._halt:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._wake.wait(left)  # set by stop(), and by each request queued meanwhile
            self._wake.clear()  # what was queued is still seen: _serve looks before it sleeps
        return False

    def _fresh_state(self) -> None:
        """What a restarted worker decodes on: a fresh batch (prepared, as :meth:`start` prepares it),
        the compiled step's buffers dropped, no rows reserved; the same sessions and queue. A failure
        here is one more death (:meth:`_run`)."""
        self._stop[0] = 0
        self._reserved = self._left = 0
        self._outage_said.clear()
        self._batch = self._new_batch()
        self._batch.prepare(self.config.max_rows)
        if not getattr(self.run_decoder, "resident", None):  # its layouts are made once (as idle keeps them)
            compiled = getattr(self.run_decoder, "native", None)
            if compiled is not None:
                compiled.release()
        self._grown = True  # an idle spell hands back whatever the restart made

    def _release_idle(self) -> None:
        """:meth:`_release_decode_state`, whose failure only leaves the memory held (it used to end the
        decode thread: every later request of this worker waited for its deadline)."""
        try:
            self._release_decode_state()
        except Exception as exc:  # noqa: BLE001 - memory left held is no reason to stop serving
            log.warning(
                "translator %s: idle, its decode state kept (%s: %s)", self.name, type(exc).__name__, exc
            )

    def _release_decode_state(self) -> None:
        """Hand back the memory the last requests' steps grew (decode thread, nothing in flight or
        waiting): a fresh batch, so no view or plan of the old one holds a buffer, the compiled step's
        buffers, and the heap pages that freed (glibc's ``malloc_trim``). A decoder whose state lives
        on the device keeps it: its layouts are made once, when the translator starts."""
        self._grown = False
        if getattr(self.run_decoder, "resident", None):
            return
        self._batch = self._new_batch()
        compiled = getattr(self.run_decoder, "native", None)
        dropped = compiled.release() if compiled is not None else 0
        self._shrink_encoder()
        return_freed_memory()
        self.releases += 1
        if self.observer is not None:
            self.observer.observe_release(self.model, "decode")
        log.debug("translator %s: idle, %.1f MiB of decode buffers released", self.name, dropped / 2**20)

    def _shrink_encoder(self) -> None:
        """Shrink the encoder session's memory arena (a runner that can: ``run_encoder.shrink``, ONNX
        Runtime's): it keeps the largest join's activations otherwise, ~25 MiB a worker for a 44M
        parameter Transformer. One encoder run over a lone EOS; a failure only leaves the arena as it was."""
        shrink = getattr(self.run_encoder, "shrink", None)
        if shrink is None:
            return
        try:
            shrink(step_spec.encoder_inputs(self.spec, [[]]))
        except Exception as exc:  # noqa: BLE001 - memory left held is no reason to fail a worker
            log.debug("translator %s: the encoder's arena did not shrink (%s)", self.name, exc)

    def _expire(self) -> None:
        """Fail requests past their deadline; forget waiting ones already answered."""
        now = time.monotonic()
        with self._lock:
            waiting = list(self._waiting)
        late = [job for job in self._running_jobs() | set(waiting) if not job.closed and now >= job.deadline]
        message = "translation did not finish before its deadline"
        self._post_all([(job, DeadlineExceeded(message), "timeout") for job in late])
        if any(job.closed for job in waiting):
            with self._lock:
                self._waiting = deque(j for j in self._waiting if not j.closed)

    def _joining(self) -> int:
        """Sentences likely to join after the step about to run (the step allocates its buffers with
        room for their rows): those waiting now that would fit, plus as many as left at the last
        step, whose clients typically send their next request while this step runs. Too many costs
        untouched memory; too few, the copy a join makes without room."""
        with self._lock:
            if not self._waiting:
                return self._left
            fit = pick(self._waiting, self.config.max_rows - self._reserved, self.config, take=False)
        return len(fit) + self._left

    def _admit(self) -> None:
        """Encode waiting sentences (one of each request in turn) that fit the row budget, in one encoder
        call, and join them."""
        try:
            with self._lock:
                waiting = self._waiting
                if not waiting or not ready_to_admit(waiting, self._steps, self._batch.size, self.config):
                    return
                self._admitting = True  # before they leave the queue: a stop sees them in one or the other
                picked = pick(waiting, self.config.max_rows - self._reserved, self.config, take=True)
            self._join(picked)
        finally:  # reserved by then (or answered); a pick that raised left it set, and a stop then
            self._admitting = False  # waited its whole grace with nothing waiting or reserved

    def _join(self, picked: list[tuple[Job, int]]) -> None:
        """Encode the ``picked`` sentences in one encoder call and join them to the batch."""
        if not picked:
            return
        sources = [job.sources[i] for job, i in picked]
        beams = self._batch.beams  # replaced by a join's first change to the batch
        try:
            encoded = self.run_encoder(step_spec.encoder_inputs(self.spec, sources))  # {name: [n, ...]}
            configs, lengths = [job.config for job, _ in picked], [len(s) + 1 for s in sources]
            self._batch.join(picked, encoded, configs, lengths)
        except Exception as exc:  # noqa: BLE001 - an encoder call that fails or cannot join fails its requests
            _log_failure(exc, self._outage_said, "translator %s: encoder failed", self.name)
            for job in {job for job, _ in picked}:  # taken off the queue: answered here or never
                failed = f"translator {self.name!r} encoder failed: {exc}"
                self._post(job, _failure(exc, failed, self.name, self.config.retry_after_s), "failure")
            if self._batch.beams is not beams:  # half joined: the loop fails the batch and starts afresh
                raise
            return
        self._reserved += sum(job.config.beam_size for job, _ in picked)
        self._outage_said.clear()

    def _step(self) -> None:
        """Drop answered requests' rows, one decoder + search step, answer requests all of whose
        sentences finished."""
        self._batch.remove(np.array([job.closed for job, _ in self._batch.keys], dtype=bool))
        rows, requests = self._batch.live_rows, len(self._running_jobs())
        with self._lock:
            # a compiled call may run several steps: up to MAX_STEPS while nothing waits; while sentences
            # wait (for more joiners, or for rows), until the oldest has waited join_wait_steps. A
            # request that makes the waiting ones join_fraction of the batch stops the call after the
            # step in flight (submit), as one waiting already does here.
            waiting = self._waiting
            if not waiting:
                steps = MAX_STEPS
            else:
                waited = self._steps - oldest_queued_step(waiting)
                steps = max(1, self.config.join_wait_steps - waited)
            self._stop[0] = bool(waiting) and fraction_waiting(waiting, self._batch.size, self.config)
        started = time.monotonic()
        self._grown = True
        finished = self._batch.step(self.run_decoder, self._joining(), steps)
        ran = self._batch.last_steps
        self._steps, self._left = self._steps + ran, len(finished)
        # no rows: every request in the batch was answered (its client left, it timed out) and its rows
        # dropped, so no decoder call ran; counted, it was a step of 0 rows in the decoder series and
        # in the translator's statistics (execution_count)
        if self.observer is not None and rows:
            seconds = (time.monotonic() - started) / ran
            # each step's mean rows: a compiled call's steps run other counts than its first where it
            # widens joiners from one row to their beam or narrows finished ones (rows was the first's)
            total = getattr(self._batch, "last_rows", 0) or rows * ran
            per_step = total // ran if total % ran == 0 else total / ran
            self.observer.observe_decode_step(self.model, per_step, requests, seconds, ran)
        answers: list[tuple[Job, Any, str]] = []
        for done in finished:
            job, index = done.key
            if job.closed:
                continue
            if done.error is not None:  # this sentence's own failure: its request alone fails
                error = UnprocessableInput(f"text {index}: {done.error}; the request cannot be decoded")
                answers.append((job, error, "failure"))
                job.closed = True  # its other sentences finishing in this step answer nothing more
                continue
            job.results[index] = done.hypotheses
            if len(job.results) == len(job.sources):
                answers.append((job, [job.results[i] for i in range(len(job.sources))], "success"))
        # the rows left, before the answers go out: posting them hands the GIL to the event loop, whose
        # clients send their next requests to the least-loaded worker (load) while this thread waits
        # for it back, so a worker that had just emptied still counted its answered rows
        beams = self._batch.beams
        self._reserved = int(beams.beam.sum()) if beams is not None else 0
        self._post_all(answers)


# A backend's errors saying its server cannot serve now (Triton unreachable: 503 with Retry-After; its
# queue full: 429; its deadline: 504): answered as they are, and no fault of the gateway's code.
NOT_SERVING_NOW = (Unavailable, Overloaded, DeadlineExceeded)
OUTAGE_LINES = 64  # distinct failure lines a scheduler remembers as logged in one outage
# the least a stop waits for the decode thread before it cancels the call it is in, whatever the grace:
# an idle or healthy thread sees the stop well within it (at a grace of 0 its client was closed, logged)
CANCEL_FLOOR_S = 0.5


def _failure(exc: Exception, message: str, name: str, retry_after_s: float) -> ServingError:
    """What a failed encoder or decoder call answers the requests it served: the backend's own error
    where it says the server cannot serve now (:data:`NOT_SERVING_NOW`); a step entry the backend no
    longer serves (Triton in explicit model control told to unload ``<name>_decoder``: its NOT_FOUND)
    a 503 with Retry-After saying the translator is not ready, as its ready route says (it was a 500
    with a traceback a batch until the entry was loaded again); else a 500 with ``message``: the
    requests did nothing wrong."""
    if isinstance(exc, NOT_SERVING_NOW):
        return exc
    if isinstance(exc, ModelNotFound):
        return Unavailable(f"translator {name!r} is not ready: {exc.message}", retry_after=retry_after_s)
    return ServingError(message)


def _log_failure(exc: Exception, said: set[str], message: str, *args: object) -> None:
    """Log a failed encoder or decoder call: a server that cannot serve now in one warning line (a
    Triton that is down failed every batch, and a traceback each flooded the log with the same
    frames), once an outage (``said``: the lines logged since a call worked; repeats go to debug),
    anything else with its traceback, as the batcher logs a batch that failed."""
    if isinstance(exc, (*NOT_SERVING_NOW, ModelNotFound)):  # ModelNotFound: an entry unloaded
        line = (message + ": %s: %s") % (*args, type(exc).__name__, exc)
        log.log(logging.DEBUG if line in said else logging.WARNING, "%s", line)
        if len(said) >= OUTAGE_LINES:  # lines that differ at every call (a deadline's figures): bounded
            said.clear()
        said.add(line)
    else:
        log.error(message, *args, exc_info=exc)
