"""What a translator's decoding scheduler is given: its caps and where it reports what it does.

:class:`SchedulerConfig` is set by the gateway's settings (``serving.lifespan.scheduler_config``) and
:class:`DecodeObserver` implemented by ``serving.metrics.GatewayMetrics``; the loop that honours and
reports them is :class:`serving.decoding.scheduler.DecodingScheduler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SchedulerConfig:
    """Caps of one translator's loop."""

    max_rows: int = 256  # decoder rows per step (a sentence reserves beam_size rows)
    max_queue: int = 128  # requests waiting for admission before 429
    max_encoder_batch: int = 64  # sentences per encoder call
    # admission (see serving.decoding.admission.ready_to_admit): into an empty batch at once; into a
    # running one when the waiting sentences reach `join_fraction` of the running ones, or the oldest
    # request has waited `join_wait_steps` decoder steps, so one encoder call and one join serve several
    # joiners
    join_fraction: float = 0.25
    join_wait_steps: int = 2
    # a compiled call (indexed rows) runs on up to this many steps after one that finished a sentence,
    # whose answer waits meanwhile, so one return to Python retires the sentences of several steps
    # (vLLM's multi-step scheduling, bounded): 0 answers at the step that finished it. A joiner still
    # stops the call (see DecodingScheduler._step). Measured at c=32 on 2 cores: 0 -> 8, +40-50 %
    # tokens/s, lower p50 and p99 (docs/translator-interface.md, "Finished sentences held")
    finish_hold_steps: int = 8
    timeout_s: float = 30.0  # default per-request deadline (504 after it)
    retry_after_s: float = 1.0  # sent with 429 / 503
    # decode threads per translator (each its own batch and sessions); None: ``cpu_workers`` for a
    # translator whose decoder runs on ONNX Runtime's CPU provider, else 1 (TranslatorPool.start)
    workers: int | None = None
    # what None gives on the CPU: the gateway sets it from the cores a gateway process has
    # (serving.lifespan.cpu_decode_workers; docs/translator-interface.md, "Decode workers")
    cpu_workers: int = 1
    # the event loop's thread under SCHED_BATCH while this decode thread is busy (serving.threads,
    # --cpu-policy auto): its wake-ups then do not preempt decode steps
    busy_loop_policy: bool = False
    # a decode thread idle for this long hands back the decode state its last requests grew (the
    # compiled step's cache and output buffers, kept for the next step): memory follows the load, and
    # the first step after an idle spell allocates again. None: kept until the gateway stops.
    release_idle_s: float | None = 10.0
    # a decode thread that dies (an error its loop's own handlers did not catch) answers the requests
    # of its batch 503 and serves again on a fresh batch after a backoff: `restart_backoff_s`, doubled
    # at each death within `restart_window_s` up to `restart_backoff_max_s`; more than `worker_restarts`
    # deaths within the window (a crash that recurs at every start) and it stays down (0: never restarts)
    worker_restarts: int = 5
    restart_window_s: float = 60.0
    restart_backoff_s: float = 0.1
    restart_backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("join_wait_steps", "finish_hold_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"SchedulerConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_rows", "max_queue", "max_encoder_batch", "workers", "cpu_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.join_fraction <= 1:
            raise ValueError(f"SchedulerConfig.join_fraction must be in [0, 1], got {self.join_fraction}")
        if self.timeout_s <= 0:
            raise ValueError(f"SchedulerConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.release_idle_s is not None and not self.release_idle_s > 0:
            raise ValueError(f"SchedulerConfig.release_idle_s must be > 0 or None, got {self.release_idle_s}")
        if self.worker_restarts < 0:
            raise ValueError(f"SchedulerConfig.worker_restarts must be >= 0, got {self.worker_restarts}")
        for name in ("restart_window_s", "restart_backoff_s", "restart_backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SchedulerConfig.{name} must be > 0, got {getattr(self, name)}")


class DecodeObserver(Protocol):
    """Where the loop reports what it does (``serving.metrics.GatewayMetrics`` implements it)."""

    def observe_decode_step(
        self, model: str, rows: float, requests: int, seconds: float, steps: int = 1
    ) -> None:
        """``steps`` decoder steps (one compiled call's), ``rows`` rows each on average, ``seconds`` long."""

    def observe_release(self, model: str, kind: str) -> None:
        """An idle worker handed back the memory its requests grew (``kind``: ``decode`` here)."""

    def observe_worker_death(self, model: str, outcome: str) -> None:
        """A decode thread died on an error; ``outcome``: ``restarted`` (it serves again after its
        backoff) or ``stopped`` (its restarts used up, or the gateway stopping). Optional: the loop
        looks it up, so an observer written before it still serves."""

    def watch_queue_depth(self, model: str, read: Callable[[], int]) -> None:
        """Read a translator's waiting requests (``read()``, across its decode workers) when scraped."""

    def observe_translation(
        self,
        model: str,
        seconds: float,
        tokens: int,
        outcome: str,
        texts: int = 1,
        queued: float | None = None,
        version: str = "",
    ) -> None:
        """One answered request: end to end ``seconds``; ``queued``, of those, the wait until its last
        sentence joined the batch (None where it never joined: refused, expired or cancelled first);
        ``version``: the one it named ("": the latest)."""
