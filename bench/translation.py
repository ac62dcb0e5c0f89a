"""Translation side by side: the gateway (iteration-level batched beam search over ONNX Runtime), Kiln's
decoding engine in-process (batch engine, scheduler path, batch-1 latency), the PyTorch reference beam
search with and without its KV cache, and CTranslate2 on the same weights (fp32 and int8, at its best
layout on ``--threads`` threads and at one thread); then every other registered translator
(``gru_attention``, ``lstm_attention``) checked for identity with its PyTorch reference through the
gateway, and every translator through real Triton (:mod:`bench.translation_identity`).

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
from bench.translation_engines import ctranslate2_rows, engine_rows, pytorch_parallel_row, pytorch_rows
from bench.translation_gateway import TARGET_CONCURRENCY, gateway_rows, triton_rows
from bench.translation_paired import paired_latency_rows, paired_rows
from bench.translation_rows import Workload, agreement
from bench.translation_targets import acceptance, arithmetic_rows

log = logging.getLogger(__name__)


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
    for part, error in errors.items():  # the log says so too, not only the report at the end
        log.warning("translation: %s not measured: %s", part, error)
    reasons = dict(errors)  # why a target's rows did not run, for its note
    int8 = Path(args.repository) / f"{main.model}_int8"
    if not int8.is_dir():  # the gateway's rows leave it out (no error): the int8 target says why
        reasons["int8 entry"] = f"{int8} is not in the repository (export writes it where it passes its gate)"
        progress(f"translation: no int8 entry rows: {reasons['int8 entry']}")
    targets = acceptance(rows[main.model], work, reasons)
    targets += [identity.identity_target(m, r, errors) for m, r in rows.items()]
    targets += [
        identity.unprepared_target(key, error) for key, error in errors.items() if key.startswith("identity ")
    ]
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
    rows += engine_rows(args.repository, w.model, w.texts, w.refs, beams, w.count, w.max_length)
    progress("translation: PyTorch reference (with and without cache)")
    rows += pytorch_rows(w.ckpt, w.texts, w.refs, beams, args.threads, w.count, max_length=w.max_length)
    if args.threads > 1:
        progress(f"translation: PyTorch reference in {args.threads} processes of one thread")
        parallel = pytorch_parallel_row(
            w.checkpoint, w.texts, w.refs, args.threads, w.count, max_length=w.max_length
        )
        rows += [parallel] if parallel else []
    try:
        progress("translation: CTranslate2 on the same weights")
        rows += ctranslate2_rows(
            w.checkpoint, w.ckpt, w.texts, w.refs, beams, out, w.count, args.threads, w.max_length
        )
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
    rows = pytorch_rows(
        w.ckpt,
        w.texts,
        w.refs,
        beams,
        args.threads,
        w.count,
        caches=(True,),
        timed=False,
        max_length=w.max_length,
    )
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
        max_length=w.max_length,
        **options,
    )


def arithmetic(args, w: Workload) -> dict[str, Any]:
    """This workload's weight products (:func:`bench.translation_work.measure`) and this machine's
    float32 product speed right now (one thread; the usable cores)."""
    import os

    from bench.machine import speed_probe

    work = translation_work.measure(args.repository, w.model, w.texts, w.count, max_length=w.max_length)
    work["product_gflops"] = speed_probe()["product_gflops"]
    work["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return work


def _markdown(
    main: str,
    rows: dict[str, list[dict[str, Any]]],
    errors: dict[str, str],
    work: dict[str, Any] | None = None,
) -> str:
    """The main translator's table, the identity table of the others, the differing translations, the
    workload's arithmetic, errors."""
    md = f"## Translation (`{main}`, held-out test sentences)\n\n" + table(rows[main], MAIN_COLUMNS) + "\n"
    md += (
        "\nA gateway row's workers are its processes (`--workers`), each with the default decode workers: "
        "2 in a lone process of 2 cores or more, 1 in each of several (`--decode-workers`).\n"
    )
    others = [m for m in rows if m != main]
    if others:
        md += _identity_section(rows, others)
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
        md += "\n".join(_paired_line(r) for r in paired) + "\n"
    if work:
        md += _arithmetic_section(work, rows[main])
    if errors:
        md += "\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items()) + "\n"
    return md


def _identity_section(rows: dict[str, list[dict[str, Any]]], others: list[str]) -> str:
    """The identity table of the translators other than the main one."""
    return (
        f"\n### Identity of the other translators ({', '.join(f'`{m}`' for m in others)})\n\n"
        "Each on its own held-out test sentences; PyTorch translated once, each gateway row one run "
        "(read for agreement; only c=32 beam 4 for speed).\n\n"
        + table([{**r, "model": m} for m in others for r in rows[m]], identity.TABLE_COLUMNS)
        + "\n"
    )


def _paired_line(row: dict[str, Any]) -> str:
    """A paired row's rounds: each one's p50 or tokens/s, and its ratios to each engine it was paired with."""
    return (
        f"- {row['engine']}: "
        + (
            f"p50 ms {', '.join(f'{v:.2f}' for v in row['rounds'])}"
            if "p50_ms" in row
            else f"tokens/s {', '.join(f'{v:.0f}' for v in row['rounds'])}"
        )
        + (f"; ratios {', '.join(f'{v:.2f}' for v in row['ratios'])}" if "ratios" in row else "")
        + "".join(
            f"; to {engine} {', '.join(f'{v:.2f}' for v in versus['ratios'])}"
            for engine, versus in row.get("versus", {}).items()
        )
    )


def _arithmetic_section(work: dict[str, Any], main_rows: list[dict[str, Any]]) -> str:
    """The workload's weight products against the machine's float32 product speed, and each fp32
    engine's share of that ceiling."""
    first, *shares = translation_work.share_lines(
        work, work["product_gflops"], work["cores"], arithmetic_rows(main_rows)
    )
    return (
        "\nThe arithmetic (bench.translation_work; weight products only, so the real bound is lower): "
        + first
        + ".\n\n"
        + "\n".join(f"- {line}" for line in shares)
        + "\n"
    )
