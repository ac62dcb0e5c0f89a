"""Beam search over the exported ONNX encoder/decoder against the PyTorch reference, token for token,
and the int8 decoder's gate against the fp32 one.

The numpy side is the serving code itself (``serving.decoding.offline.translate_ids``), so these
checks prove that what the gateway will run translates exactly like the trained model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.parity import ParityReport, ort_session
from export.quantize import TranslationGate
from export.results import RANDOM_IDS_SOURCE, ExportContext
from export.translator_graphs import TranslatorGraphs

log = logging.getLogger(__name__)

CHUNK = 32


@dataclass(frozen=True)
class HeldOut:
    """Held-out source sentences (ids without EOS), their reference translations when known, and origin."""

    sources: list[list[int]]
    references: list[str] | None
    origin: str  # given sentences | test split | random ids


def held_out(ctx: ExportContext, spec: dict[str, Any], n: int) -> HeldOut:
    """Given sentences, the checkpoint's test split, or random ids as a last resort; empty ones dropped."""
    if ctx.validation is not None:
        given = [list(map(int, s)) for s in ctx.validation if len(s)][:n]
        if not given:  # beam parity on nothing would pass, and BLEU on nothing fails
            raise ValueError(f"{ctx.name}: no non-empty validation sentences for beam parity")
        return HeldOut(given, None, "given sentences")
    try:
        from tokenizers import Tokenizer

        from training.data.tokenizer import literal_specials
        from training.translate_setup import held_out_pairs

        tok = literal_specials(Tokenizer.from_str(ctx.ckpt["tokenizers"]["source"]))  # as served
        pairs = [(src, ref) for src, ref in held_out_pairs(ctx.ckpt, "test")[:n]]
        ids = [e.ids for e in tok.encode_batch([src for src, _ in pairs])]
        kept = [(s, ref) for s, (_, ref) in zip(ids, pairs, strict=True) if s]
        if kept:
            return HeldOut([s for s, _ in kept], [ref for _, ref in kept], "test split")
    except Exception as exc:  # noqa: BLE001 - fall back, and say so in the report
        log.warning(
            "%s: test split unavailable (%s); beam parity on random ids (--data-path: where the corpus is now)",
            ctx.name,
            exc,
        )
    rng = np.random.default_rng(0)
    high = spec["vocab_size_src"]
    sources = [rng.integers(4, high, size=int(rng.integers(2, 12))).tolist() for _ in range(min(n, 64))]
    return HeldOut(sources, None, RANDOM_IDS_SOURCE)


@dataclass(frozen=True)
class SearchSettings:
    """Beam width and length limit of every parity search (recorded in the reports' metrics)."""

    beam_size: int
    max_length: int

    def as_dict(self) -> dict[str, int]:
        return {"beam_size": self.beam_size, "max_length": self.max_length}


def _search_config(spec: dict[str, Any], data: HeldOut, beam_size: int) -> SearchSettings:
    longest = max((len(s) for s in data.sources), default=1)
    return SearchSettings(beam_size, int(min(spec["max_positions"], 2 * longest + 10)))


def _torch_beams(
    model: torch.nn.Module, spec: dict[str, Any], sents: list[list[int]], cfg: SearchSettings
) -> list[list[int]]:
    from training.decoding import beam_search

    out = []
    for i in range(0, len(sents), CHUNK):
        chunk = [s + [spec["eos_id"]] for s in sents[i : i + CHUNK]]
        src = torch.full((len(chunk), max(map(len, chunk))), spec["pad_id"], dtype=torch.int64)
        for row, ids in enumerate(chunk):
            src[row, : len(ids)] = torch.tensor(ids)
        hyps = beam_search(model, src, beam_size=cfg.beam_size, n_best=1, max_length=cfg.max_length)
        out += [list(h[0].tokens) for h in hyps]
    return out


def _onnx_beams(
    g: TranslatorGraphs,
    decoder: Path,
    sents: list[list[int]],
    cfg: SearchSettings,
    encoder: Path | None = None,
) -> list[list[int]]:
    """Best hypotheses of the serving beam search over the encoder graph at ``encoder`` (``g``'s by
    default) and the decoder at ``decoder``."""
    from serving.decoding.offline import translate_ids
    from serving.decoding.options import BeamConfig
    from serving.execution.onnxruntime import onnxruntime_runner

    step_spec = g.step_spec
    enc = onnxruntime_runner(ort_session(encoder or g.encoder_path))
    dec = onnxruntime_runner(ort_session(decoder))
    bos, eos = step_spec["bos_id"], step_spec["eos_id"]
    config = BeamConfig(cfg.beam_size, n_best=1, max_length=cfg.max_length, eos_id=eos, bos_id=bos)
    out = []
    for i in range(0, len(sents), CHUNK):
        out += [list(h[0].tokens) for h in translate_ids(enc, dec, step_spec, sents[i : i + CHUNK], config)]
    return out


def _agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, int | None]:
    """Fraction of identical token lists and the index of the first difference (None when all agree)."""
    same = [a == b for a, b in zip(reference, other, strict=True)]
    first = same.index(False) if False in same else None
    return (float(np.mean(same)) if same else 1.0), first


def beam_parity(ctx: ExportContext, g: TranslatorGraphs) -> ParityReport:
    """Fraction of held-out sentences whose best hypothesis is identical; anything below 100% fails."""
    spec = g.spec
    data = held_out(ctx, spec, ctx.options.beam_sentences)
    cfg = _search_config(spec, data, ctx.options.beam_size)
    ref = _torch_beams(ctx.model, spec, data.sources, cfg)
    got = _onnx_beams(g, g.decoder_path, data.sources, cfg)
    return _identity_report(ref, got, data, cfg, "beam search differs", ("PyTorch", "ONNX"))


def fused_agreement(
    ctx: ExportContext,
    g: TranslatorGraphs,
    plain: Path,
    fused: Path,
    fused_encoder: Path | None = None,
    plain_encoder: Path | None = None,
) -> ParityReport:
    """Beam search over the fused-attention step graph ``fused`` (and the fused encoder graph
    ``fused_encoder``, if given) against the graphs they replace (``plain`` and ``plain_encoder``,
    ``g``'s encoder by default, already proved against PyTorch or gated) on the held-out sentences:
    anything below 100 % identical best hypotheses fails (the fused graph is then not written)."""
    data = held_out(ctx, g.spec, ctx.options.beam_sentences)
    cfg = _search_config(g.spec, data, ctx.options.beam_size)
    ref = _onnx_beams(g, plain, data.sources, cfg, plain_encoder)
    got = _onnx_beams(g, fused, data.sources, cfg, fused_encoder or plain_encoder)
    return _identity_report(ref, got, data, cfg, "fused attention changes beam search", ("plain", "fused"))


def _identity_report(
    ref: list[list[int]],
    got: list[list[int]],
    data: HeldOut,
    cfg: SearchSettings,
    what: str,
    names: tuple[str, str],
) -> ParityReport:
    """A report that fails unless every best hypothesis in ``got`` equals ``ref``'s (``what`` and the
    two sides' ``names`` word the failure)."""
    agreement, first = _agreement(ref, got)
    report = ParityReport(tolerance=0.0)
    report.metrics.update(
        beam_agreement=agreement, beam_sentences=len(data.sources), beam_source=data.origin, **cfg.as_dict()
    )
    if first is not None:
        report.fail(
            f"{what} on {round((1 - agreement) * len(ref))}/{len(ref)} sentences; first: "
            f"sentence {first} {names[0]} {ref[first]} vs {names[1]} {got[first]}"
        )
    return report


def _detokenize(hyps: list[list[int]], target_tokenizer: str, eos: int) -> list[str]:
    """Texts of id hypotheses, EOS dropped and specials skipped, as the gateway returns them."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(target_tokenizer).decode_batch([[t for t in h if t != eos] for h in hyps])


def _bleu(texts: list[str], refs: list[str]) -> float:
    """Training's corpus BLEU (:func:`training.translation_eval.corpus_bleu`), so the gate reads as its log."""
    from training.translation_eval import corpus_bleu

    return corpus_bleu(texts, refs)


def gate_bleu(fp32: list[str], int8: list[str], refs: list[str] | None) -> tuple[float, float]:
    """BLEU of the fp32 and the int8 translations against ``refs``, or against the fp32 translations
    when there are none: fp32's is then 100 by definition, int8's 100 where identical, else corpus BLEU
    (:func:`_bleu`: over the n-gram orders the translations have, sacreBLEU's effective order; the same
    score wherever they hold a 4-gram). Plain BLEU scored translations of 3 tokens or fewer 0, against
    themselves or against references they equal, so int8's were 0 too whatever they said: a drop of 0,
    and the BLEU gate passed on nothing measured."""
    if refs is not None:
        return _bleu(fp32, refs), _bleu(int8, refs)
    if int8 == fp32:
        return 100.0, 100.0
    return 100.0, _bleu(int8, fp32)


def int8_gate(
    ctx: ExportContext, g: TranslatorGraphs, int8_decoder: Path, int8_encoder: Path | None = None
) -> tuple[ParityReport, TranslationGate]:
    """Beam search with the int8 decoder (and encoder, if given) against the fp32 graphs on the
    held-out sentences.

    BLEU is measured against the references when the test split is available, else against the fp32
    translations. ``ctx.accuracy_hook`` may replace the gate (tests force a rejection with it).
    """
    spec = g.spec
    data = held_out(ctx, spec, ctx.options.beam_sentences)
    cfg = _search_config(spec, data, ctx.options.beam_size)
    fp32 = _onnx_beams(g, g.decoder_path, data.sources, cfg)
    int8 = _onnx_beams(g, int8_decoder, data.sources, cfg, int8_encoder)
    agreement, _ = _agreement(fp32, int8)
    target, eos = ctx.ckpt["tokenizers"]["target"], spec["eos_id"]
    fp32_texts, int8_texts = _detokenize(fp32, target, eos), _detokenize(int8, target, eos)
    bleu_fp32, bleu_int8 = gate_bleu(fp32_texts, int8_texts, data.references)
    gate = TranslationGate(
        agreement=agreement,
        sentences=len(data.sources),
        bleu_fp32=bleu_fp32,
        bleu_int8=bleu_int8,
        bleu_reference="references" if data.references is not None else "fp32 translations",
        min_agreement=ctx.options.int8_min_agreement,
        max_bleu_drop=ctx.options.int8_max_bleu_drop,
    )
    if ctx.accuracy_hook is not None:
        gate = ctx.accuracy_hook(gate)
    report = ParityReport(tolerance=float("inf"))
    report.metrics.update(beam_agreement=gate.agreement, beam_sentences=len(data.sources))
    report.metrics.update(beam_source=data.origin, int8_gate=gate.as_dict(), **cfg.as_dict())
    return report, gate
