"""The parts of the CPU profiles (``quick``, ``full``): the classifier on each engine called directly,
through each server, the translator (:mod:`bench.translation`) and the replicas (:mod:`bench.scaleout`).
Each part is measured on its own: one that fails is named with the results and the others still count.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from bench import engines, inputs, perf_analyzer, servers

log = logging.getLogger(__name__)


def run_sections(
    args: argparse.Namespace, profile: dict[str, Any], out: Path, wanted: set[str], results: dict[str, Any]
) -> list[str]:
    """Each wanted part into ``results``; a part that fails is named in ``results["failed"]`` with its
    error, and the others still run (minutes of measurement are not lost to one server that would not
    start). Returns the failed parts."""
    sections = {
        "engines": lambda: _classify_engines(args, profile),
        "servers": lambda: _classify_servers(args, profile, out),
        "translation": lambda: _translation(args, profile, out),
        "replicas": lambda: _replicas(args, profile, out),
    }
    for name, measure in sections.items():
        if name not in wanted:
            continue
        try:
            results[name] = measure()
        except Exception as exc:  # noqa: BLE001 - reported with the results, the other parts still count
            log.error("%s failed: %s", name, exc)
            results.setdefault("failed", {})[name] = f"{type(exc).__name__}: {exc}"
    return list(results.get("failed", {}))


def _translation(args: argparse.Namespace, profile: dict[str, Any], out: Path) -> dict[str, Any]:
    from bench import translation

    return translation.run(args, profile, out, progress=log.info)


def _replicas(args: argparse.Namespace, profile: dict[str, Any], out: Path) -> dict[str, Any]:
    from bench import scaleout

    return scaleout.run(args, profile, out, progress=log.info)


def _classify_engines(args: argparse.Namespace, profile: dict[str, Any]) -> list[dict[str, Any]]:
    """The classifier on each engine called directly, at the profile's batch sizes."""
    jobs = engines.classifier_jobs(
        args.repository,
        args.checkpoints,
        args.classifier,
        profile["batches"],
        args.threads,
        profile["engine_budget_s"],
    )
    return mark_servable(
        engines.run_jobs(jobs, progress=log.info), _max_batch(args.repository / args.classifier)
    )


def _max_batch(entry: Path) -> int:
    """The gateway's largest batch of the entry (its config's ``max_batch_size``; 0 where unreadable)."""
    from serving.execution.repository import load_entry

    try:
        return load_entry(entry).max_batch_size
    except (OSError, ValueError) as exc:
        log.warning("%s: no max_batch_size read (%s); every batch counts for the ceiling", entry, exc)
        return 0


def mark_servable(rows: list[dict[str, Any]], max_batch: int) -> list[dict[str, Any]]:
    """Mark each engine row whose batch the gateway can never form (past ``max_batch``, when known):
    the full profile measures batches 128 and 256 beside a ``max_batch_size`` of 64, and a ceiling
    from those is one no server of that config reaches (:func:`bench.targets.best_direct_throughput`)."""
    for row in rows:
        if max_batch > 0 and row.get("batch", 0) > max_batch:
            row["servable"] = False
    return rows


def _classify_servers(args: argparse.Namespace, profile: dict[str, Any], out: Path) -> dict[str, Any]:
    """The classifier through each server with Kiln's own clients, then perf_analyzer's rows."""
    checkpoint = inputs.classifier_checkpoint(args.repository, args.checkpoints, args.classifier)
    result = servers.run_servers(
        args.repository,
        checkpoint,
        args.classifier,
        out / "logs",
        concurrencies=profile["concurrency"],
        duration_s=profile["duration_s"],
        threads=args.threads,
        workers=args.gateway_workers,
        progress=log.info,
    )
    try:
        result["perf_analyzer"] = perf_analyzer.side_by_side(
            args.repository,
            args.classifier,
            out / "logs",
            concurrencies=profile["pa_concurrency"],
            threads=args.threads,
            rounds=profile["pa_rounds"],
            workers=args.gateway_workers,
            progress=log.info,
        )
    except Exception as exc:  # noqa: BLE001 - the rows of Kiln's own clients above still count
        log.error("perf_analyzer's rows failed: %s", exc)
        result["perf_analyzer"] = {"skipped": f"failed: {exc}"}
    return result
