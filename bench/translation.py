"""Translation side by side: the gateway (iteration-level batched beam search over ONNX Runtime), Kiln's
decoding engine in-process (batch engine, scheduler path, batch-1 latency), the PyTorch reference beam
search with and without its KV cache, and CTranslate2 on the same weights (fp32 and int8, at its best
layout on two cores and at one thread); then every other registered translator (``gru_attention``,
``lstm_attention``) checked for identity with its PyTorch reference through the gateway, and every
translator through real Triton (:mod:`bench.translation_identity`).

Every engine translates the same held-out test sentences; tokens are counted the same way for all
(target subwords of the output plus EOS), and each row carries its BLEU and its agreement with the
PyTorch reference (the share identical and how many differ), so speed and quality are read together.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import translation_identity as identity
from bench import translation_work
from bench.report import table
from bench.stats import ratio
from bench.translation_engines import ctranslate2_rows, engine_rows, pytorch_parallel_row, pytorch_rows
from bench.translation_gateway import TARGET_CONCURRENCY, gateway_engine, gateway_rows, triton_rows
from bench.translation_paired import CT2_BEST, PAIRED, paired_latency_rows, paired_rows
from bench.translation_rows import Workload, agreement

log = logging.getLogger(__name__)


def _find(rows, engine: str, beam: int = 4, concurrency: int | None = None) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in rows
            if r["engine"] == engine
            and r["beam"] == beam
            and (concurrency is None or r["concurrency"] == concurrency)
        ),
        None,
    )


def best_gateway(
    rows, kind: str = "", beam: int = 4, concurrency: int = TARGET_CONCURRENCY
) -> dict[str, Any] | None:
    """The gateway layout with the most tokens/s for this kind of row (the one the targets use). A
    layout whose paired rounds ran (:mod:`bench.translation_paired`) is judged by their median
    tokens/s: one separate row, a few seconds in a drifting machine's slow spell, would otherwise hand
    the targets the layout the rounds did not measure (20261202-173307: two workers' row 6 155
    tokens/s, their five rounds 8 714-9 905, one worker's row 8 775)."""
    found = [
        r
        for r in rows
        if "workers" in r
        and r["engine"] == gateway_engine(kind, r["workers"])
        and r["beam"] == beam
        and r["concurrency"] == concurrency
    ]
    paired = {
        r["engine"].removesuffix(PAIRED): r["tokens_per_s"]
        for r in rows
        if r["engine"].endswith(PAIRED) and r.get("concurrency") == concurrency and "tokens_per_s" in r
    }
    return max(found, key=lambda r: paired.get(r["engine"], r["tokens_per_s"]), default=None)


def best_pytorch(rows, beam: int = 4) -> dict[str, Any] | None:
    """The PyTorch reference with its KV cache at its faster layout: one process on every thread, or
    one single-thread process per thread (:func:`~bench.translation_engines.pytorch_parallel_row`)."""
    found = [
        r
        for r in rows
        if r["engine"].startswith("pytorch (kv cache")
        and not r["engine"].endswith(PAIRED)
        and r["beam"] == beam
    ]
    return max(found, key=lambda r: r["tokens_per_s"], default=None)


def acceptance(rows: list[dict[str, Any]], work: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Issue 10's figures: each measured ratio with its goal (reported, never asserted); the gateway
    targets use its best layout measured in this run, named in the target. With the workload's
    arithmetic (``work``: :func:`arithmetic`), the PyTorch target's note says how much of the
    machine's float32 product speed its goal takes, and how much CTranslate2 reaches."""
    ct_best = _find(rows, CT2_BEST)
    ct_one = _find(rows, "ctranslate2 fp32 (1 thread)", concurrency=32)
    ct_lat = _find(rows, "ctranslate2 fp32 (1 thread)", concurrency=1)
    gateway, int8 = best_gateway(rows), best_gateway(rows, "int8 entry")
    gateway, int8 = _paired(rows, gateway), _paired(rows, int8)
    alone = _paired(rows, _find(rows, "kiln engine (scheduler)", concurrency=1))
    checks = [
        (
            f"{_name(gateway, 'gateway')} c=32 beam 4 tokens/s >= 0.5x CTranslate2 fp32 at its best layout",
            0.5,
            gateway,
            ct_best,
            "tokens_per_s",
            False,
        ),
        (
            f"{_name(gateway, 'gateway')} c=32 beam 4 >= 4x the PyTorch reference with KV cache (best layout)",
            4.0,
            gateway,
            best_pytorch(rows),
            "tokens_per_s",
            False,
        ),
        (
            "in-process engine (batch 32, 1 thread) >= 0.6x CTranslate2 fp32 at 1 thread",
            0.6,
            _find(rows, "kiln engine (batch 32)"),
            ct_one,
            "tokens_per_s",
            False,
        ),
        (
            f"{_name(int8, 'int8 entry through the gateway')} >= 0.7x CTranslate2 fp32 at its best layout",
            0.7,
            int8,
            ct_best,
            "tokens_per_s",
            False,
        ),
        (
            "batch-1 latency p50 (beam 4) <= 2x CTranslate2 fp32 at 1 thread",
            2.0,
            alone,
            ct_lat,
            "p50_ms",
            True,
        ),
    ]
    targets = [_target(*check) for check in checks]
    shares = arithmetic_shares(rows, work) if work else {}
    goal = shares.get(GOAL_4X)
    if goal is not None:
        ct = shares.get(CT2_BEST)
        targets[1]["note"] += (
            f"; 4x the reference is {goal:.0%} of what the machine's float32 products allow this workload's "
            f"weight products alone ({translation_work.ceiling(work, work['product_gflops'], work['cores']):,.0f} "
            "tokens/s, bench.translation_work)"
            + (f", CTranslate2's best layout reaches {ct:.0%}" if ct else "")
        )
    return targets


GOAL_4X = "4x the PyTorch reference (the target)"


def arithmetic_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Engine -> tokens/s of what the fp32 throughput targets compare (their paired rounds' median
    where those ran), and the 4x goal."""
    found = {}
    pytorch = best_pytorch(rows)
    for row in (best_gateway(rows), _find(rows, CT2_BEST), pytorch):
        if row is not None:
            paired = next(
                (r for r in rows if r["engine"] == row["engine"] + PAIRED and "tokens_per_s" in r), None
            )
            found[row["engine"]] = (paired or row)["tokens_per_s"]
    if pytorch is not None:
        found[GOAL_4X] = 4 * found[pytorch["engine"]]
    return found


def arithmetic_shares(rows: list[dict[str, Any]], work: dict[str, Any]) -> dict[str, float]:
    top = translation_work.ceiling(work, work["product_gflops"], work["cores"])
    return {engine: tokens / top for engine, tokens in arithmetic_rows(rows).items()}


def arithmetic(args, w: Workload) -> dict[str, Any]:
    """This workload's weight products (:func:`bench.translation_work.measure`) and this machine's
    float32 product speed right now (one thread; the usable cores)."""
    import os

    from bench.machine import speed_probe

    work = translation_work.measure(args.repository, w.model, w.texts, w.count)
    work["product_gflops"] = speed_probe()["product_gflops"]
    work["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return work


def _paired(rows, row: dict[str, Any] | None) -> dict[str, Any] | None:
    """``row`` with the ratios its paired row measured (:mod:`bench.translation_paired`) where there is one
    for its engine and concurrency: the CTranslate2 and PyTorch targets read those medians of
    round-by-round ratios (``paired``: the engine compared against -> the median)."""
    paired = next(
        (
            r
            for r in rows
            if row and r["engine"] == row["engine"] + PAIRED and r["concurrency"] == row["concurrency"]
        ),
        None,
    )
    if paired is None:
        return row
    medians = {paired["against"]: paired["paired_ratio"]}
    medians.update({engine: v["paired_ratio"] for engine, v in paired.get("versus", {}).items()})
    return {**row, "paired": medians, "rounds": len(paired["ratios"])}


def _name(row: dict[str, Any] | None, fallback: str) -> str:
    return row["engine"] if row else fallback


def _target(target: str, goal: float, ours, theirs, key: str, lower_is_better: bool) -> dict[str, Any]:
    measured = (
        ratio(ours[key], theirs[key]) if ours and theirs and key in ours and key in theirs else float("nan")
    )
    note = (
        f"agreement with the reference: {ours.get('same_as_reference', float('nan')):.1f}%"
        if ours
        else "not run"
    )
    if ours and theirs and theirs["engine"] in ours.get("paired", {}):
        note += f"; median of {ours['rounds']} paired rounds (the separate rows: {measured:.2f})"
        measured = ours["paired"][theirs["engine"]]
    return {
        "target": target,
        "goal": goal,
        "measured": measured,
        "note": note,
        "lower_is_better": lower_is_better,
    }


MAIN_COLUMNS = [
    "engine",
    "beam",
    "concurrency",
    "sentences",
    "tokens_per_s",
    "sentences_per_s",
    "p50_ms",
    "p99_ms",
    "bleu",
    "exact_match",
    "same_as_reference",
    "differs_from_reference",
]


def run(
    args, profile: dict[str, Any], out: Path, progress: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """The main translator measured side by side, every other registered translator checked for identity
    with the PyTorch reference, Triton for all; agreement, targets and the report's section."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    errors: dict[str, str] = {}
    main = Workload.load(args.checkpoints, args.translator, profile["sentences"])
    others = identity.prepare(args, profile["sentences"], errors, progress)
    rows = {main.model: _measured_rows(args, profile, main, out, errors, progress)}
    for w in others:
        rows[w.model] = _identity_rows(args, profile, w, logs, progress)
    try:
        progress("translation: gateway -> Triton (own scheduler vs Triton's <name> model), every translator")
        concurrency = max(profile["translate_concurrency"])
        workloads = [main, *others]
        found = triton_rows(args.repository, workloads, profile["beams"], concurrency, args.threads, logs)
        for model, extra in found.items():
            rows[model] += extra
    except Exception as exc:  # noqa: BLE001 - reported in the results, the rest still counts
        errors["triton"] = str(exc)
    for w in (main, *others):
        agreement(rows[w.model], w.texts)
    try:
        work = arithmetic(args, main)
    except Exception as exc:  # noqa: BLE001 - reported in the results, the rest still counts
        errors["arithmetic"], work = str(exc), None
    targets = acceptance(rows[main.model], work) + [identity.identity_target(m, r) for m, r in rows.items()]
    return {
        "rows": rows[main.model],
        "identity": {w.model: rows[w.model] for w in others},
        "errors": errors,
        "targets": targets,
        "work": work,
        "markdown": _markdown(main.model, rows, errors, work),
        "python": sys.version.split()[0],
    }


def _measured_rows(args, profile, w: Workload, out: Path, errors, progress) -> list[dict[str, Any]]:
    """The main translator: gateway at both layouts, Kiln's engine in-process, PyTorch, CTranslate2."""
    beams = profile["beams"]
    progress(
        f"translation: gateway (1 and {args.gateway_workers} workers), {len(w.texts)} sentences, beams {list(beams)}"
    )
    rows = _gateway(args, profile, w, out / "logs", layouts=sorted({1, args.gateway_workers}))
    progress("translation: Kiln's decoding engine in-process (batch, scheduler, batch-1)")
    rows += engine_rows(args.repository, w.model, w.texts, w.refs, beams, w.count)
    progress("translation: PyTorch reference (with and without cache)")
    rows += pytorch_rows(w.ckpt, w.texts, w.refs, beams, args.threads, w.count)
    if args.threads > 1:
        progress(f"translation: PyTorch reference in {args.threads} processes of one thread")
        parallel = pytorch_parallel_row(w.checkpoint, w.texts, w.refs, args.threads, w.count)
        rows += [parallel] if parallel else []
    try:
        progress("translation: CTranslate2 on the same weights")
        rows += ctranslate2_rows(w.checkpoint, w.ckpt, w.texts, w.refs, beams, out, w.count)
    except Exception as exc:  # noqa: BLE001 - reported in the results, the rest still counts
        errors["ctranslate2"] = str(exc)
        return rows
    rounds = profile.get("paired_rounds", 0)
    if rounds and 4 in beams and TARGET_CONCURRENCY in profile["translate_concurrency"]:
        progress(f"translation: the gateway and CTranslate2 alternating, {rounds} rounds (paired ratios)")
        try:
            layout = args.gateway_workers
            rows += paired_rows(args.repository, w, out, args.threads, layout, rounds)
        except Exception as exc:  # noqa: BLE001 - the targets fall back to the separate rows
            errors["paired"] = str(exc)
        progress(f"translation: Kiln and CTranslate2 batch-1 latency alternating, {rounds} rounds")
        try:
            rows += paired_latency_rows(args.repository, w, out, rounds)
        except Exception as exc:  # noqa: BLE001 - the target falls back to the separate rows
            errors["paired batch-1"] = str(exc)
    return rows


def _identity_rows(args, profile, w: Workload, logs: Path, progress) -> list[dict[str, Any]]:
    """An identity translator: the PyTorch reference (KV cache) translated once, and the gateway (one
    layout) at every beam and concurrency of the profile and mixed beams, each run once."""
    beams = profile["beams"]
    progress(f"translation identity: {w.model}, {len(w.texts)} sentences, beams {list(beams)}")
    rows = pytorch_rows(w.ckpt, w.texts, w.refs, beams, args.threads, w.count, caches=(True,), timed=False)
    rows += _gateway(args, profile, w, logs, layouts=(args.gateway_workers,), repeats=1)
    return rows


def _gateway(args, profile, w: Workload, logs: Path, **options: Any) -> list[dict[str, Any]]:
    """``w`` through the gateway at the profile's beams and concurrencies (``options``: layouts, repeats)."""
    return gateway_rows(
        args.repository,
        w.model,
        w.texts,
        w.refs,
        profile["beams"],
        profile["translate_concurrency"],
        args.threads,
        logs,
        w.count,
        **options,
    )


def _markdown(
    main: str,
    rows: dict[str, list[dict[str, Any]]],
    errors: dict[str, str],
    work: dict[str, Any] | None = None,
) -> str:
    """The main translator's table, the identity table of the others, the differing translations, the
    workload's arithmetic, errors."""
    md = f"## Translation (`{main}`, held-out test sentences)\n\n" + table(rows[main], MAIN_COLUMNS) + "\n"
    others = [m for m in rows if m != main]
    if others:
        md += (
            f"\n### Identity of the other translators ({', '.join(f'`{m}`' for m in others)})\n\n"
            "Each on its own held-out test sentences; PyTorch translated once, each gateway row one run "
            "(read for agreement; only c=32 beam 4 for speed).\n\n"
        )
        md += table([{**r, "model": m} for m in others for r in rows[m]], identity.TABLE_COLUMNS) + "\n"
    differences = "\n".join(filter(None, (identity.differences_markdown(m, r) for m, r in rows.items())))
    if differences:
        md += "\nTranslations that differ from the PyTorch reference (the first 5 of each row):\n\n"
        md += differences + "\n"
    paired = [r for r in rows[main] if "rounds" in r]
    if paired:
        md += (
            "\nRows marked [paired] alternate round by round, seconds apart (bench.translation_paired); "
            "the CTranslate2 and PyTorch targets read the median of their per-round ratios:\n\n"
        )
        md += (
            "\n".join(
                f"- {r['engine']}: "
                + (
                    f"p50 ms {', '.join(f'{v:.2f}' for v in r['rounds'])}"
                    if "p50_ms" in r
                    else f"tokens/s {', '.join(f'{v:.0f}' for v in r['rounds'])}"
                )
                + (f"; ratios {', '.join(f'{v:.2f}' for v in r['ratios'])}" if "ratios" in r else "")
                + "".join(
                    f"; to {engine} {', '.join(f'{v:.2f}' for v in versus['ratios'])}"
                    for engine, versus in r.get("versus", {}).items()
                )
                for r in paired
            )
            + "\n"
        )
    if work:
        first, *shares = translation_work.share_lines(
            work, work["product_gflops"], work["cores"], arithmetic_rows(rows[main])
        )
        md += "\nThe arithmetic (bench.translation_work; weight products only, so the real bound is lower): "
        md += first + ".\n\n" + "\n".join(f"- {line}" for line in shares) + "\n"
    if errors:
        md += "\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items()) + "\n"
    return md
