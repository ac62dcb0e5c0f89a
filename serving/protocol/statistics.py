"""Triton's statistics extension: ``GET /v2/models[/{name}[/versions/{v}]]/stats`` and gRPC
``ModelStatistics``, so ``tritonclient``'s ``get_inference_statistics`` and perf_analyzer's server-side
breakdown (queue, compute input / infer / output) work against the gateway as against Triton.

Read from the gateway's Prometheus metrics (:mod:`serving.metrics`), not from counters of its own: with
``--workers`` every worker's requests count, whichever worker answers. What each field is here:

- ``success`` / ``fail``: requests ended in each outcome, and their end-to-end time summed;
- ``queue``: requests executed, and their time in the batcher's queue (a translator's: below);
- ``compute_input`` / ``compute_infer`` / ``compute_output``: the same requests, and the time of the
  batch each ran in (merging it, the model's run, splitting the answers), once per request, as Triton
  counts them;
- ``inference_count`` / ``execution_count``: items executed and batches run (a translator: texts of
  successful requests and decoder steps);
- ``batch_stats``: per batch size (items), how many ran and their parts' time;
- ``last_inference``: when the model last ran a batch (a translator: last answered), ms since the epoch.

A translator decodes by iteration-level batching: its requests share each decoder step, so its
``queue`` is each successful request's wait until its last sentence joined the decode batch, its
``compute_infer`` the time from then to its answer (the encoder call and the steps it shared; input and
output count the same requests at zero time), and no ``batch_stats``; its steps' time is
``kiln_decoder_step_seconds``. perf_analyzer without ``-x`` picks the version whose queue count grew,
so a translator's must.
Through ``--backend triton`` the batching happens in Triton: ``success`` / ``fail`` stay the gateway's
(its requests' outcomes, end to end, the hop to Triton included) and the rest (queue, compute, batches,
counts, last inference) is Triton's own, asked of it at each call (:meth:`serving.gateway.Gateway.batching_statistics`), except for
translators the gateway decodes itself.
Versions: the series read here carry the ``version`` that served each request and batch (a request
that names none: the model's latest, :meth:`serving.metrics.GatewayMetrics.versioned`), so each
version's statistics are its own, as Triton keeps them: a model's unversioned statistics list every
version it serves (one without traffic at zeros), a versioned call that version only. A translator's
requests count under the version they name (outcome, queue, compute, texts); its decoder steps, which
every version's requests share (all decode with the same encoder and decoder entries), under its latest.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from serving.errors import ModelNotFound
from serving.execution.base import Backend
from serving.metrics import GatewayMetrics

PARTS = (("compute_input", "input"), ("compute_infer", "infer"), ("compute_output", "output"))


class _Samples:
    """Metric samples by name, model and version, summed over the labels a question leaves open."""

    def __init__(self, samples: list[Any]) -> None:
        self.found: dict[tuple[str, str, str], list[tuple[dict[str, str], float]]] = defaultdict(list)
        for sample in samples:
            labels = sample.labels
            key = (sample.name, labels.get("model", ""), labels.get("version", ""))
            self.found[key].append((labels, sample.value))

    def total(self, name: str, model: str, version: str, **labels: str) -> float:
        return sum(
            value
            for found, value in self.found.get((name, model, version), ())
            if all(found.get(k) == v for k, v in labels.items())
        )

    def by(self, name: str, model: str, version: str, label: str) -> dict[str, float]:
        """``label``'s values among the samples of ``name`` for ``model`` in ``version``, each with its
        total."""
        totals: dict[str, float] = defaultdict(float)
        for found, value in self.found.get((name, model, version), ()):
            if label in found:
                totals[found[label]] += value
        return totals


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": int(round(seconds * 1e9))}


async def model_statistics(
    backend: Backend, metrics: GatewayMetrics, name: str = "", version: str = ""
) -> list[dict]:
    """``model_stats`` of the statistics response: every version of every model served when ``name``
    is empty (whatever ``version`` says, as Triton answers; an entry that failed to load is left out,
    as Triton lists only the models it loaded), else that model in ``version``, or in every version
    it serves where that is empty (an unknown model or version, or one that failed to load, raises
    ``ModelNotFound``: a 404). A
    backend that batches elsewhere (``batching_statistics``: Triton) gives the batching half; an
    unreachable one makes the call fail as its requests would (503), not answer zeros for what it did."""
    if name:
        versions = backend.metadata(name, version).versions  # an unknown one raises: a 404
        await _check_loaded(backend, name, version)  # none: the newest version that loaded
        served = [
            (name, v) for v in ([version] if version else await _loaded(backend, name, versions) or [""])
        ]
    else:
        served = []
        for model in sorted(backend.list_models()):
            try:
                versions = backend.metadata(model).versions
            except ModelNotFound:  # listed, but its entry failed to load: nothing it could have run
                continue
            served.extend((model, v) for v in await _loaded(backend, model, versions))  # none: never ran
    samples = _Samples(metrics.statistics_samples({model for model, _ in served} if name else None))
    stats = [_model_stat(samples, model, served_version) for model, served_version in served]
    batching = getattr(backend, "batching_statistics", None)
    if batching is not None:
        theirs = await batching(served)
        for stat in stats:
            if (their := theirs.get((stat["name"], stat["version"]))) is not None:
                stat["inference_stats"].update(their.pop("inference_stats"))
                stat.update(their)
    return stats


async def _check_loaded(backend: Backend, name: str, version: str) -> None:
    """Refuse the statistics of a model whose load failed, as its unknown twin (404, gRPC NOT_FOUND):
    zeros answered 200 described a model that never ran, which the every-model list leaves out.
    Triton refuses it too ("requested model ... is not available"), with the 400 it gives any model it
    does not serve; the gateway keeps its 404 for those, as for an unknown model."""
    error = backend.load_error(name)
    if error and not await backend.model_ready(name, version):
        raise ModelNotFound(f"model {name!r} is not available: it failed to load: {error}")


async def _loaded(backend: Backend, name: str, versions: list[str]) -> list[str]:
    """Those of ``versions`` that loaded: all of them, unless the model has a load error, when only
    those ready (a several-version policy whose newest version failed serves the others, whose
    statistics were a 404 and left out of the every-model list while they answered every call)."""
    if not backend.load_error(name):
        return versions
    return [v for v in versions if await backend.model_ready(name, v)]


def _model_stat(s: _Samples, model: str, version: str) -> dict[str, Any]:
    executed = s.total("kiln_executed_requests_total", model, version)
    stages = s.by("kiln_request_stage_seconds_total", model, version, "stage")
    inference_stats = {
        outcome: _duration(
            s.total("kiln_requests_total", model, version, outcome=label),
            s.total("kiln_request_seconds_total", model, version, outcome=label),
        )
        for outcome, label in (("success", "success"), ("fail", "failure"))
    }
    inference_stats["queue"] = _duration(executed, stages.get("queue", 0.0))
    for field, part in PARTS:
        inference_stats[field] = _duration(executed, stages.get(part, 0.0))
    inference_stats["cache_hit"] = inference_stats["cache_miss"] = _duration(0, 0.0)  # no response cache
    runs = s.by("kiln_batch_runs_total", model, version, "size")
    seconds = s.found.get(("kiln_batch_seconds_total", model, version), ())
    batch_stats = []
    for size in sorted(runs, key=int):
        stat: dict[str, Any] = {"batch_size": int(size)}
        for field, part in PARTS:
            spent = sum(
                v for labels, v in seconds if labels.get("size") == size and labels.get("part") == part
            )
            stat[field] = _duration(runs[size], spent)
        batch_stats.append(stat)
    last = s.total("kiln_last_inference_timestamp_seconds", model, version)
    items = sum(int(size) * count for size, count in runs.items())
    return {
        "name": model,
        "version": version,
        "last_inference": int(last * 1000),
        "inference_count": int(items + s.total("kiln_translated_texts_total", model, version)),
        "execution_count": int(sum(runs.values()) + s.total("kiln_decoder_steps_total", model, version)),
        "inference_stats": inference_stats,
        "batch_stats": batch_stats,
        # Triton's fields for decoupled models' responses and a model's memory: none here, but present
        # (empty) as Triton writes them, so a client reading them finds them over HTTP as over gRPC
        "memory_usage": [],
        "response_stats": {},
    }
