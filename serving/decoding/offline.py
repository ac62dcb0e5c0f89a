"""Whole batches of sentences decoded to the end over one :class:`~serving.decoding.stepper.DecodeBatch`,
without a scheduler: export's ONNX beam-parity check, Triton's ``<name>`` python model and the bench's
engine rows. Every sentence computes exactly what it would alone (tested), so batching is free to
group them as it likes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving.decoding import beam_search as bs
from serving.decoding.native_decoder import MAX_STEPS
from serving.decoding.step_spec import (
    Runner,
    StepSpec,
    check_config,
    encoder_inputs,
    parse_step_spec,
    takes_indexed_rows,
)
from serving.decoding.stepper import decode_batch


def translate_ids(
    run_encoder: Runner,
    run_decoder: Runner,
    spec: dict[str, Any] | StepSpec,
    src_ids: Sequence[Sequence[int]],
    config: bs.BeamConfig,
    indexed: bool | None = None,
) -> list[list[bs.Hypothesis]]:
    """Beam-search every source sentence (ids without EOS), all rows batched in each decoder call;
    the encoder inputs stored once per sentence where the decoder takes them (``indexed=None``: ask
    the runner)."""
    spec = parse_step_spec(spec)
    check_config(spec, config)
    if not src_ids:
        return []
    batch = decode_batch(
        spec, takes_indexed_rows(spec, run_decoder) if indexed is None else indexed, run_decoder
    )
    encoded = run_encoder(encoder_inputs(spec, src_ids))
    batch.join(range(len(src_ids)), encoded, [config] * len(src_ids), [len(s) + 1 for s in src_ids])
    results: dict[int, list[bs.Hypothesis]] = {}
    while batch.size:
        for done in batch.step(run_decoder, steps=MAX_STEPS):
            if done.error is not None:
                raise FloatingPointError(f"source sentence {done.key}: {done.error}")
            results[done.key] = done.hypotheses
    return [results[i] for i in range(len(src_ids))]


def translate_in_batches(
    run_encoder: Runner,
    run_decoder: Runner,
    spec: dict[str, Any] | StepSpec,
    src_ids: Sequence[Sequence[int]],
    config: bs.BeamConfig,
    max_sentences: int,
) -> list[list[bs.Hypothesis]]:
    """:func:`translate_ids` over batches of at most ``max_sentences``, sentences grouped by source
    length (as CTranslate2's ``translate_batch`` does with ``max_batch_size``): less padding, and a
    batch's sentences finish at closer steps. Results in the order of ``src_ids``."""
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    size = max(1, max_sentences)
    results: list[list[bs.Hypothesis]] = [[] for _ in src_ids]
    for start in range(0, len(order), size):
        part = order[start : start + size]
        batch = translate_ids(run_encoder, run_decoder, spec, [src_ids[i] for i in part], config)
        for i, hypotheses in zip(part, batch, strict=True):
            results[i] = hypotheses
    return results
