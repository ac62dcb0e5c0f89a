"""Issue 10's translation targets read off a run's rows (:mod:`bench.translation`): each measured ratio
with its goal, the gateway at its best layout, the medians of the paired rounds where they ran
(:mod:`bench.translation_paired`), and the share of the machine's float32 product speed each fp32
engine reaches (:mod:`bench.translation_work`).
"""

from __future__ import annotations

from typing import Any

from bench import translation_work
from bench.stats import ratio
from bench.translation_gateway import TARGET_CONCURRENCY, gateway_engine
from bench.translation_paired import PAIRED


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


def best_ctranslate2(rows, beam: int = 4) -> dict[str, Any] | None:
    """CTranslate2 fp32 at its best layout, batches of 32 sentences: one single-thread translator per
    thread of the bench's ``--threads`` (:func:`~bench.translation_engines.ct2_layouts`; the layout its
    paired rounds run), or its one-thread row where the bench ran on one thread."""
    found = [
        r
        for r in rows
        if r["engine"].startswith("ctranslate2 fp32 (")
        and not r["engine"].endswith(PAIRED)
        and r["beam"] == beam
        and r["concurrency"] == TARGET_CONCURRENCY
    ]
    multi = [r for r in found if r["engine"].startswith("ctranslate2 fp32 (inter ")]
    return (multi or found or [None])[0]


def acceptance(
    rows: list[dict[str, Any]], work: dict[str, Any] | None = None, errors: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Issue 10's figures: each measured ratio with its goal (reported, never asserted); the gateway
    targets use its best layout measured in this run, named in the target. With the workload's
    arithmetic (``work``: :func:`bench.translation.arithmetic`), the PyTorch target's note says how much
    of the machine's float32 product speed its goal takes, and how much CTranslate2 reaches. A target
    whose rows did not run reads "–" and its note names the row missing, with the error of the
    translation section (``errors``) that says why where there is one."""
    targets = []
    for target, goal, ours, theirs, sides in _throughput_checks(rows):
        targets.append(_target(target, goal, ours, theirs, "tokens_per_s", False, sides, errors))
    targets.append(_latency_target(rows, errors))
    if work:
        targets[1]["note"] += _arithmetic_note(rows, work)
    return targets


def _not_measured(missing: list[str], errors: dict[str, str]) -> str:
    """The note of a target one of whose rows did not run: which, and why where an error says so."""
    reasons = [f"{key}: {error}" for key, error in errors.items() if any(key in m for m in missing)]
    return (
        "not measured: this run has no "
        + " and no ".join(f"{m} row" for m in missing)
        + (f" ({'; '.join(reasons)})" if reasons else "")
    )


def _throughput_checks(
    rows,
) -> list[tuple[str, float, dict[str, Any] | None, dict[str, Any] | None, tuple[str, str]]]:
    """The tokens/s targets as (target, goal, our row, the row it is measured against, what each of the
    two rows is, for the note of a target one of them is missing from); the gateway's rows carry their
    paired ratios where the rounds ran."""
    ct_best = best_ctranslate2(rows)
    gateway, int8 = best_gateway(rows), best_gateway(rows, "int8 entry")
    gateway, int8 = _paired(rows, gateway), _paired(rows, int8)
    return [
        (
            f"{_name(gateway, 'gateway')} c=32 beam 4 tokens/s >= 0.5x CTranslate2 fp32 at its best layout",
            0.5,
            gateway,
            ct_best,
            ("gateway (c=32, beam 4)", CT2_BEST),
        ),
        (
            f"{_name(gateway, 'gateway')} c=32 beam 4 >= 4x the PyTorch reference with KV cache (best layout)",
            4.0,
            gateway,
            best_pytorch(rows),
            ("gateway (c=32, beam 4)", "PyTorch reference with KV cache (beam 4)"),
        ),
        (
            "in-process engine (batch 32, 1 thread) >= 0.6x CTranslate2 fp32 at 1 thread",
            0.6,
            _find(rows, "kiln engine (batch 32)"),
            _find(rows, "ctranslate2 fp32 (1 thread)", concurrency=32),
            ("kiln engine (batch 32)", "ctranslate2 fp32 (1 thread)"),
        ),
        (
            f"{_name(int8, 'int8 entry through the gateway')} >= 0.7x CTranslate2 fp32 at its best layout",
            0.7,
            int8,
            ct_best,
            ("int8 entry (gateway, c=32, beam 4)", CT2_BEST),
        ),
    ]


CT2_BEST = "ctranslate2 fp32 (best layout)"


def _latency_target(rows, errors: dict[str, str] | None = None) -> dict[str, Any]:
    """Kiln's in-process scheduler one request at a time against CTranslate2 at one thread, batch 1."""
    return _target(
        "batch-1 latency p50 (beam 4) <= 2x CTranslate2 fp32 at 1 thread",
        2.0,
        _paired(rows, _find(rows, "kiln engine (scheduler)", concurrency=1)),
        _find(rows, "ctranslate2 fp32 (1 thread)", concurrency=1),
        "p50_ms",
        True,
        ("kiln engine (scheduler) batch-1", "ctranslate2 fp32 (1 thread) batch-1"),
        errors,
    )


def _arithmetic_note(rows: list[dict[str, Any]], work: dict[str, Any]) -> str:
    """How much of what the machine's float32 products allow the 4x goal takes, and CTranslate2's best
    layout reaches (empty without a PyTorch row to set the goal)."""
    shares = arithmetic_shares(rows, work)
    goal = shares.get(GOAL_4X)
    if goal is None:
        return ""
    best = best_ctranslate2(rows)
    ct = shares.get(best["engine"]) if best else None
    return (
        f"; 4x the reference is {goal:.0%} of what the machine's float32 products allow this workload's "
        f"weight products alone ({translation_work.ceiling(work, work['product_gflops'], work['cores']):,.0f} "
        "tokens/s, bench.translation_work)" + (f", CTranslate2's best layout reaches {ct:.0%}" if ct else "")
    )


GOAL_4X = "4x the PyTorch reference (the target)"


def arithmetic_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Engine -> tokens/s of what the fp32 throughput targets compare (their paired rounds' median
    where those ran), and the 4x goal."""
    found = {}
    pytorch = best_pytorch(rows)
    for row in (best_gateway(rows), best_ctranslate2(rows), pytorch):
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


def _target(
    target: str,
    goal: float,
    ours,
    theirs,
    key: str,
    lower_is_better: bool,
    sides: tuple[str, str] = ("our", "compared"),
    errors: dict[str, str] | None = None,
) -> dict[str, Any]:
    measured = (
        ratio(ours[key], theirs[key]) if ours and theirs and key in ours and key in theirs else float("nan")
    )
    missing = [side for side, row in zip(sides, (ours, theirs), strict=True) if row is None]
    if missing:  # "–", and the note says which row did not run and, where an error says so, why
        note = _not_measured(missing, errors or {})
    else:
        note = f"agreement with the reference: {ours.get('same_as_reference', float('nan')):.1f}%"
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
