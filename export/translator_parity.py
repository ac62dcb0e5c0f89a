"""A translator's encoder and decoder graphs against PyTorch, and the checks of their fused-attention twins.

The cases: short and long sources and caches, and indexed rows over a store of sentences for decoders
that take ``row_place``. A fused twin is compared by beam search with the graph it replaces too
(:mod:`export.beam_parity`), and serving runs it only where both checks pass; a plain graph that fails
here fails the translator's export (:mod:`export.translator`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.beam_parity import fused_agreement
from export.parity import ParityReport, check_feeds, ort_session, session_runner, torch_runner
from export.results import ExportContext
from export.translator_feeds import decoder_inputs, indexed_inputs, is_indexed, random_source
from export.translator_graphs import FusedStep, TranslatorGraphs

log = logging.getLogger(__name__)

ENCODER_CASES = ({"batch": 1, "src_len": 3}, {"batch": 7, "src_len": 9}, {"batch": 64, "src_len": 5})
DECODER_CASES = (
    {"batch": 1, "src_len": 4, "past_len": 0},
    {"batch": 7, "src_len": 9, "past_len": 3},
    {"batch": 64, "src_len": 5, "past_len": 6},
)
# Rows over a store of sentences (decoders with a ``row_place`` input only): ``batch`` rows reading
# ``sentences`` places, in no order, some places read by no row.
INDEXED_CASES = (
    {"batch": 8, "sentences": 3, "src_len": 6, "past_len": 2},
    {"batch": 12, "sentences": 5, "src_len": 9, "past_len": 5},
    {"batch": 64, "sentences": 64, "src_len": 5, "past_len": 1},
)
LONG_PAST = 17  # the shortest of the long cases' caches: past the short cases', below any table's end


def long_encoder_cases(spec: dict[str, Any]) -> tuple[dict[str, int], ...]:
    """A source as long as the model takes (``max_positions``): a position table or a mask wrong only
    past the short cases' lengths is named here, not by the first long request served."""
    return ({"batch": 2, "src_len": int(spec.get("max_positions", 256))},)


def long_decoder_cases(spec: dict[str, Any]) -> tuple[dict[str, int], ...]:
    """Caches past ``DECODER_CASES``' short ones, up to the longest a step reads (``max_positions`` - 1,
    with a source as long): beam parity reaches long caches only where a held-out translation runs
    that long. A few lengths on two rows each, cheap beside the export."""
    longest = int(spec.get("max_positions", 256))
    pasts = sorted({min(p, longest - 1) for p in (LONG_PAST, longest // 2, longest - 1)})
    return tuple(
        {"batch": 2, "src_len": longest if past == longest - 1 else 7, "past_len": past} for past in pasts
    )


def checked_fused(
    ctx: ExportContext, g: TranslatorGraphs, plain: Path, fused: Path | None
) -> FusedStep | None:
    """``fused`` (the fused-attention twin of the decoder graph ``plain``) checked against PyTorch at the
    decoder's tolerance (an int8 one: its diffs recorded, as the int8 graph's are) and by beam search
    against ``plain`` (100 % identical); refused, with a warning, when a check fails (serving then
    runs ``plain``)."""
    if fused is None:
        return None
    ctx.step("fused attention parity")
    fp32 = plain == g.decoder_path  # int8: its diffs from PyTorch are the quantization's, recorded only
    parity = decoder_parity(g, fused, ParityReport(g.decoder.atol if fp32 else float("inf")))
    beams = fused_agreement(ctx, g, plain, fused)
    problems = parity.errors + beams.errors  # int8: only a malformed output errs
    if problems:
        log.warning("%s: fused step graph refused: %s", ctx.name, problems[0])
        return FusedStep(None, parity, beams, reason=problems[0])
    return FusedStep(fused, parity, beams)


def checked_fused_encoder(
    ctx: ExportContext, g: TranslatorGraphs, plain: Path, fused: Path | None, decoder: Path
) -> FusedStep | None:
    """``fused`` (the fused-attention twin of the encoder graph ``plain``) checked against PyTorch at the
    encoder's tolerance (an int8 one: its diffs recorded) and by beam search with ``decoder`` against
    ``plain`` (100 % identical); refused, with a warning, when a check fails (serving then runs
    ``plain``)."""
    if fused is None:
        return None
    ctx.step("fused encoder parity")
    fp32 = plain == g.encoder_path
    parity = encoder_parity(g, fused, ParityReport(g.encoder.atol if fp32 else float("inf")))
    beams = fused_agreement(ctx, g, decoder, decoder, fused, plain)
    problems = parity.errors + beams.errors  # int8: only a malformed output errs
    if problems:
        log.warning("%s: fused encoder graph refused: %s", ctx.name, problems[0])
        return FusedStep(None, parity, beams, reason=problems[0])
    return FusedStep(fused, parity, beams)


def _decoder_cases(g: TranslatorGraphs) -> list[tuple[dict[str, int], dict[str, np.ndarray]]]:
    """Per-row cases (short and long caches), and indexed ones where the decoder takes ``row_place``."""
    per_row = (*DECODER_CASES, *long_decoder_cases(g.spec))
    cases = [(s, decoder_inputs(g.frozen, g.spec, s, seed=i)) for i, s in enumerate(per_row)]
    if is_indexed(g.spec):
        for i, s in enumerate(INDEXED_CASES):
            seed = len(per_row) + i
            feeds = decoder_inputs(g.frozen, g.spec, s, seed=seed)
            cases.append((s, indexed_inputs(g.spec, feeds, s["sentences"], seed)))
    return [(s, {k: v.numpy() for k, v in feeds.items()}) for s, feeds in cases]


def decoder_parity(g: TranslatorGraphs, path: Path, report: ParityReport) -> ParityReport:
    """The decoder graph at ``path`` against PyTorch at several row counts, source and cache lengths,
    within ``report``'s tolerance (an int8 graph's: unbounded)."""
    reference = torch_runner(g.decoder_module, g.decoder)
    run = session_runner(ort_session(path))
    check_feeds(g.decoder, reference, run, _decoder_cases(g), report, report.tolerance)
    return report


def encoder_parity(g: TranslatorGraphs, path: Path, report: ParityReport) -> ParityReport:
    """The encoder graph at ``path`` against PyTorch at several batch sizes and lengths (the longest
    among them), within ``report``'s tolerance (an int8 graph's: unbounded)."""
    cases = [
        (s, {"src_ids": random_source(g.spec, s["batch"], s["src_len"], np.random.default_rng(i)).numpy()})
        for i, s in enumerate((*ENCODER_CASES, *long_encoder_cases(g.spec)))
    ]
    reference = torch_runner(g.encoder_module, g.encoder)
    check_feeds(g.encoder, reference, session_runner(ort_session(path)), cases, report, report.tolerance)
    return report


def graph_parity(g: TranslatorGraphs) -> tuple[ParityReport, ParityReport]:
    """Encoder and decoder graphs against PyTorch at several batch sizes and lengths."""
    encoder = encoder_parity(g, g.encoder_path, ParityReport(g.encoder.atol))
    return encoder, decoder_parity(g, g.decoder_path, ParityReport(g.decoder.atol))
