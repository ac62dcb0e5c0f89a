"""Beam search over the exported ONNX encoder/decoder against the PyTorch reference, token for token.

The numpy side is the serving code itself (``serving.decoding.stepper.translate_ids``), so this check proves
that what the gateway will run translates exactly like the trained model.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from export.parity import ParityReport, ort_session
from export.results import ExportContext

log = logging.getLogger(__name__)

CHUNK = 32


def held_out_sentences(ctx: ExportContext, spec: dict[str, Any], n: int) -> tuple[list[list[int]], str]:
    """(source ids without EOS, where they came from): given, the test split, or random ids as a last resort."""
    if ctx.validation is not None:
        return [list(map(int, s)) for s in ctx.validation][:n], "given sentences"
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(ctx.ckpt["tokenizers"]["source"])
        from training.translate import held_out_pairs

        texts = [src for src, _ in held_out_pairs(ctx.ckpt, "test")[:n]]
        if texts:
            return [e.ids for e in tok.encode_batch(texts)], "test split"
    except Exception as exc:  # noqa: BLE001 - fall back, and say so in the report
        log.warning("%s: test split unavailable (%s); beam parity on random ids", ctx.name, exc)
    rng = np.random.default_rng(0)
    high = spec["vocab_size_src"]
    return [
        rng.integers(4, high, size=int(rng.integers(2, 12))).tolist() for _ in range(min(n, 64))
    ], "random ids"


def _torch_beams(
    model: torch.nn.Module, spec: dict[str, Any], sents: list[list[int]], cfg: dict
) -> list[list[int]]:
    from training.decoding import beam_search

    out = []
    for i in range(0, len(sents), CHUNK):
        chunk = [s + [spec["eos_id"]] for s in sents[i : i + CHUNK]]
        src = torch.full((len(chunk), max(map(len, chunk))), spec["pad_id"], dtype=torch.int64)
        for row, ids in enumerate(chunk):
            src[row, : len(ids)] = torch.tensor(ids)
        hyps = beam_search(model, src, beam_size=cfg["beam_size"], n_best=1, max_length=cfg["max_length"])
        out += [list(h[0].tokens) for h in hyps]
    return out


def _onnx_beams(
    g: dict[str, Any], spec: dict[str, Any], sents: list[list[int]], cfg: dict
) -> list[list[int]]:
    from serving.decoding.beam_search import BeamConfig
    from serving.decoding.stepper import translate_ids
    from serving.execution.onnxruntime import onnxruntime_runner

    step_spec = {k: v for k, v in spec.items() if k != "vocab_size_src"}
    enc, dec = onnxruntime_runner(ort_session(g["enc_path"])), onnxruntime_runner(ort_session(g["dec_path"]))
    config = BeamConfig(beam_size=cfg["beam_size"], n_best=1, max_length=cfg["max_length"],
                        eos_id=spec["eos_id"], bos_id=spec["bos_id"])  # fmt: skip
    out = []
    for i in range(0, len(sents), CHUNK):
        out += [list(h[0].tokens) for h in translate_ids(enc, dec, step_spec, sents[i : i + CHUNK], config)]
    return out


def beam_parity(ctx: ExportContext, g: dict[str, Any]) -> ParityReport:
    """Fraction of held-out sentences whose best hypothesis is identical; anything below 100% fails."""
    spec = g["spec"]
    sents, source = held_out_sentences(ctx, spec, ctx.options.beam_sentences)
    sents = [s for s in sents if s][: ctx.options.beam_sentences]
    longest = max((len(s) for s in sents), default=1)
    cfg = {
        "beam_size": ctx.options.beam_size,
        "max_length": int(min(spec["max_positions"], 2 * longest + 10)),
    }
    ref, got = _torch_beams(ctx.model, spec, sents, cfg), _onnx_beams(g, spec, sents, cfg)
    same = [a == b for a, b in zip(ref, got, strict=True)]
    report = ParityReport(tolerance=0.0)
    agreement = float(np.mean(same)) if same else 1.0
    report.metrics.update(beam_agreement=agreement, beam_sentences=len(sents), beam_source=source, **cfg)
    if agreement < 1.0:
        first = same.index(False)
        report.fail(
            f"beam search differs on {same.count(False)}/{len(same)} sentences; first: sentence {first} "
            f"PyTorch {ref[first]} vs ONNX {got[first]}"
        )
    return report
