"""How a dynamic batch runs on an instance's thread, and what the metrics are told of each run.

A batch runs as one model run over its requests' merged inputs (:func:`run_merged`); when that fails,
each of its requests runs alone (:func:`run_one_by_one`), so that one request's bad input fails only
that request (DESIGN.md, isolation). The observer (``GatewayMetrics``-like) is told each request's wait
in the queue and each run's parts: merging, running, splitting. These are functions of the model's run
and a clock; when a batch runs, and how its answers go back to the event loop, stays in
:class:`serving.execution.batcher.DynamicBatcher`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serving.execution.batches import Pending, Tensors, merge, split

RunFn = Callable[[int, Tensors], Tensors]  # (instance index, merged inputs) -> outputs
Clock = Callable[[], float]


def run_merged(
    run: RunFn, instance: int, live: list[Pending], *, batched: bool, clock: Clock
) -> tuple[list[Tensors], float, float]:
    """Each request's own rows of one run over the merged inputs of ``live``, and when the merge and
    the run ended (on ``clock``)."""
    merged = merge([p.inputs for p in live], batched=batched)
    merged_at = clock()
    outputs = run(instance, merged)
    ran_at = clock()
    return split(outputs, live), merged_at, ran_at


def run_one_by_one(
    run: RunFn, instance: int, live: list[Pending], failed: Exception, clock: Clock
) -> tuple[list[Tensors | Exception], list[tuple[Pending, float]]]:
    """Each request of a failed batch run alone: one request's bad input fails only that request
    (DESIGN.md, isolation). Only after a failure, so it costs the batches that run nothing. A request
    answered meanwhile (its caller went away, its deadline passed) is not run again: no one would
    read its rows. Returns each request's answer (``failed`` for those not run, which delivery
    skips), and the requests that succeeded with their run's seconds (observed as the batches of one
    they ran in)."""
    answers: list[Tensors | Exception] = []
    alone: list[tuple[Pending, float]] = []
    for pending in live:
        if pending.future.done():  # a racy read is fine: settle checks again on the loop
            answers.append(failed)
            continue
        ran_from = clock()
        try:
            answers.append(split(run(instance, pending.inputs), [pending])[0])
        except Exception as exc:  # noqa: BLE001 - this request's own answer
            answers.append(exc)
            continue
        alone.append((pending, clock() - ran_from))
    return answers, alone


def observe_batch(
    observer: Any,
    name: str,
    live: list[Pending],
    started: float,
    merged_at: float,
    ran_at: float,
    split_at: float,
    version: str = "",
) -> None:
    """A merged batch of ``name`` in ``version`` taken off the queue at ``started``: each request's
    wait, then the batch's items, requests, summed waits and the seconds of its merge, run and split."""
    waits = [started - pending.arrival for pending in live]
    for wait in waits:
        observer.observe_queue(name, wait)
    parts = (merged_at - started, ran_at - merged_at, split_at - ran_at)
    observer.observe_batch(name, sum(p.items for p in live), len(live), sum(waits), *parts, version)


def observe_alone(
    observer: Any, name: str, alone: list[tuple[Pending, float]], started: float, version: str = ""
) -> None:
    """The requests of a failed batch (taken at ``started``) that then succeeded alone, each with its
    run's seconds: each observed as the batch of one it ran in."""
    for pending, ran_s in alone:
        wait = started - pending.arrival
        observer.observe_queue(name, wait)
        observer.observe_batch(name, pending.items, 1, wait, 0.0, ran_s, 0.0, version)
