"""Translator export: ``<name>_encoder`` and ``<name>_decoder`` ONNX graphs plus the ``<name>`` python entry.

Everything is driven by the model's own step spec (docs/translator-interface.md): tensor shapes are
probed through ``encode`` / ``decode_step``, never looked up by model name. Parity covers both graphs
at several batch sizes and lengths (:mod:`export.translator_parity`, on the random feeds of
:mod:`export.translator_feeds`), then beam search over ONNX against the PyTorch reference. With
``int8`` among the precisions, a dynamically quantized decoder is gated on beam search against fp32.
No fp16 translator is built: an ``fp16`` asked for is reported as skipped in the summary.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.beam_parity import beam_parity, int8_gate
from export.freeze import freeze
from export.onnx_export import DecoderGraph, EncoderGraph, export_onnx
from export.parity import ParityReport
from export.quantize import MalformedGraph, NoWeightProducts, to_int8_dynamic
from export.results import Entry, EntryResult, ExportContext
from export.specs import BATCH, AxisRange, GraphSpec, TensorSpec, probe_tensor_specs
from export.translator_entries import (
    Int8Graph,
    int8_entry_names,
    stale_runtime,
    translator_entries,
    write_int8_entries,
    write_translator_entries,
)
from export.translator_feeds import decoder_inputs, indexed_inputs, is_indexed, random_source
from export.translator_graphs import TranslatorGraphs
from export.translator_parity import (
    checked_fused,
    checked_fused_encoder,
    decoder_parity,
    encoder_parity,
    graph_parity,
)

log = logging.getLogger(__name__)

SENTENCES = "sentences"  # the batch axis of a row_place decoder's encoder inputs (its store)


def _vocab_spec(model: torch.nn.Module) -> dict[str, Any]:
    spec = dict(model.step_spec())
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    spec["vocab_size_src"] = int(getattr(cfg, "src_vocab_size", spec["vocab_size"]))
    return spec


def _axes(spec: dict[str, Any], max_rows: int, names: tuple[str, ...]) -> dict[str, AxisRange]:
    longest = int(spec.get("max_positions", 256))
    table = {
        BATCH: AxisRange(1, max(1, max_rows // 4), max_rows),
        "src_len": AxisRange(1, min(16, longest), longest),
        "past_len": AxisRange(0, min(16, longest - 1), longest - 1),
        SENTENCES: AxisRange(1, max(1, max_rows // 4), max_rows),
    }
    return {n: table[n] for n in names}


def encoder_spec(name: str, model: torch.nn.Module, spec: dict[str, Any], max_batch: int) -> GraphSpec:
    """``<name>_encoder``: src_ids [batch, src_len] -> the encoder outputs named in the step spec."""
    rng = np.random.default_rng(0)
    outputs = probe_tensor_specs(
        lambda s: model.encode(random_source(spec, s["batch"], s["src_len"], rng)),
        spec["encoder"]["outputs"],
        [BATCH, "src_len"],
        {},
    )
    inputs = (TensorSpec("src_ids", "int64", (BATCH, "src_len"), "src_ids"),)
    axes = _axes(spec, max_batch, (BATCH, "src_len"))
    return GraphSpec(f"{name}_encoder", "encoder", inputs, outputs, axes, max_batch_size=max_batch)


def decoder_spec(name: str, model: torch.nn.Module, spec: dict[str, Any], max_rows: int) -> GraphSpec:
    """``<name>_decoder``: one step; inputs/outputs in step-spec order, roles from the spec."""
    in_names = [i["name"] for i in spec["decoder"]["inputs"]]
    roles = {i["name"]: i["role"] for i in spec["decoder"]["inputs"]}

    def run(sizes: dict[str, int]) -> dict[str, torch.Tensor]:
        feeds = decoder_inputs(model, spec, sizes)
        return {**feeds, **model.decode_step(dict(feeds))}

    axes_names = (BATCH, "src_len", "past_len")
    probed = probe_tensor_specs(run, in_names + spec["decoder"]["outputs"], list(axes_names), roles)
    if is_indexed(spec):  # encoder inputs: a batch axis of their own (the store's places)
        probed = tuple(
            dataclasses.replace(t, shape=(SENTENCES, *t.shape[1:])) if t.role == "encoder" else t
            for t in probed
        )
    used = {a for t in probed for a in t.shape if isinstance(a, str)}
    axes = _axes(spec, max_rows, tuple(a for a in (*axes_names, SENTENCES) if a in used))
    inputs, outputs = probed[: len(in_names)], probed[len(in_names) :]
    return GraphSpec(f"{name}_decoder", "decoder", inputs, outputs, axes, max_batch_size=max_rows)


def _export_graphs(ctx: ExportContext, work: Path) -> TranslatorGraphs:
    spec = _vocab_spec(ctx.model)
    src = random_source(spec, 2, 6, np.random.default_rng(1))
    tgt = torch.full((2, 3), spec["bos_id"], dtype=torch.int64)
    frozen, freeze_report = freeze(ctx.model, (src, tgt))
    mbs = ctx.options.max_batch_size
    enc = encoder_spec(ctx.name, frozen, spec, mbs)
    dec = decoder_spec(ctx.name, frozen, spec, mbs * ctx.options.beam_size)
    enc_module = EncoderGraph(frozen, enc.output_names)
    dec_module = DecoderGraph(frozen, dec.input_names, dec.output_names)
    ctx.step("export encoder")
    enc_path = export_onnx(
        enc_module, enc, (random_source(spec, 3, 5, np.random.default_rng(2)),), work / "enc.onnx"
    )
    ctx.step("export decoder")
    feeds = decoder_inputs(frozen, spec, {"batch": 6, "src_len": 5, "past_len": 4})
    if is_indexed(spec):  # a store of 4 places for 6 rows: the two batch axes differ
        feeds = indexed_inputs(spec, feeds, 4)
    example = tuple(feeds[n] for n in dec.input_names)
    dec_path = export_onnx(dec_module, dec, example, work / "dec.onnx")
    fused = _export_fused(ctx, frozen, dec_module, dec, example, work / "fused" / "dec.onnx", "decoder")
    enc_example = (random_source(spec, 3, 5, np.random.default_rng(2)),)
    fused_encoder = _export_fused(
        ctx, frozen, enc_module, enc, enc_example, work / "fused" / "enc.onnx", "encoder"
    )
    padded_encoder = split_decoder = None
    if fused is not None and "int8" in ctx.options.precisions:
        path = work / "fused" / "dec-split.onnx"
        split_decoder = _export_fused(ctx, frozen, dec_module, dec, example, path, "decoder", split_qkv=True)
    if fused_encoder is not None and "int8" in ctx.options.precisions:
        padded_encoder = _export_fused(
            ctx,
            frozen,
            enc_module,
            enc,
            enc_example,
            work / "fused" / "enc-padded.onnx",
            "encoder",
            packed=False,
        )
    return TranslatorGraphs(
        spec,
        frozen,
        freeze_report,
        enc,
        dec,
        enc_path,
        dec_path,
        encoder_module=enc_module,
        decoder_module=dec_module,
        fused_decoder_path=fused,
        fused_encoder_path=fused_encoder,
        padded_fused_encoder_path=padded_encoder,
        split_fused_decoder_path=split_decoder,
    )


def _export_fused(
    ctx: ExportContext,
    frozen: torch.nn.Module,
    module: torch.nn.Module,
    spec: GraphSpec,
    example: tuple[torch.Tensor, ...],
    path: Path,
    what: str,
    packed: bool = True,
    split_qkv: bool = False,
) -> Path | None:
    """The decoder step or the encoder (``what``) with its attentions as ``kiln.ai`` operators, for a
    model that has them (``fused_attention``, the Transformer) where the compiled kernels load;
    TorchScript exporter (its ``symbolic`` hook emits the custom nodes). None otherwise: serving then
    runs ``model.onnx``. ``packed``: the encoder computes its real positions only; ``split_qkv``: the
    decoder's q, k and v are three products (``fused_attention``)."""
    if not hasattr(frozen, "fused_attention"):
        return None
    from serving.decoding import native

    if native.load() is None:
        log.warning(
            "%s: no compiled attention operators here (no C compiler?): no fused %s graph", ctx.name, what
        )
        return None
    ctx.step(
        f"export {what} (fused attention{'' if packed else ', padded'}{', q|k|v apart' if split_qkv else ''})"
    )
    with frozen.fused_attention(packed=packed, split_qkv=split_qkv):
        return export_onnx(module, dataclasses.replace(spec, dynamo=False), example, path)


def export_translator(ctx: ExportContext, work: Path) -> list[EntryResult]:
    """The entries of one translator checkpoint (all rebuilt together when any is stale); the int8
    ones only with ``int8`` among the precisions and when they pass their gate."""
    entries = translator_entries(ctx.name, ctx.options)
    current = not any(ctx.needs_rebuild(e) for e in entries)
    if current and not stale_runtime(ctx.repository, (e.name for e in entries)):
        return [ctx.skipped(e) for e in entries] + unbuilt_precisions(ctx)
    ctx.step("freeze")
    graphs = _export_graphs(ctx, work)
    ctx.step("parity encoder/decoder")
    enc_report, dec_report = graph_parity(graphs)
    enc_report.raise_if_failed(f"{ctx.name}_encoder (ONNX vs PyTorch)")
    dec_report.raise_if_failed(f"{ctx.name}_decoder (ONNX vs PyTorch)")
    ctx.step("beam search parity")
    beam_report = beam_parity(ctx, graphs)
    beam_report.raise_if_failed(f"{ctx.name} (beam search over ONNX vs PyTorch)")
    fused = checked_fused(ctx, graphs, graphs.decoder_path, graphs.fused_decoder_path)
    fused_encoder = checked_fused_encoder(
        ctx, graphs, graphs.encoder_path, graphs.fused_encoder_path, graphs.decoder_path
    )
    results = write_translator_entries(ctx, graphs, enc_report, dec_report, beam_report, fused, fused_encoder)
    if "int8" in ctx.options.precisions:
        results += _int8_entries(ctx, graphs, work)
    return results + unbuilt_precisions(ctx)


FP16_SKIPPED = (
    "fp16 not written: Kiln builds translators in fp32 and gated int8 only (fp16 is a classifier "
    "precision); their fp32 entries serve GPU configs too"
)


def unbuilt_precisions(ctx: ExportContext) -> list[EntryResult]:
    """A summary row for ``fp16`` when it was asked for: no translator entry is built in it, and a
    precision asked for must not vanish from the summary without a word."""
    if "fp16" not in ctx.options.precisions:
        return []
    return [EntryResult(f"{ctx.name}_fp16", "fp16", "skipped", message=FP16_SKIPPED)]  # as <name>_trt rows


def _int8_entries(ctx: ExportContext, g: TranslatorGraphs, work: Path) -> list[EntryResult]:
    """Quantize the encoder and the decoder, refuse them when an output is malformed, else gate them
    on beam search against fp32; write or refuse (removing stale ones)."""
    ctx.step("int8 encoder and decoder")
    decoder = to_int8_dynamic(g.decoder_path, work / "int8" / "dec.onnx")
    encoder = _quantized_encoder(g, work / "int8" / "enc.onnx")
    fused = fused_encoder = None
    if g.fused_decoder_path is not None:  # from the q|k|v-apart twin: each product scaled as the plain's
        source = g.split_fused_decoder_path or g.fused_decoder_path
        fused = to_int8_dynamic(source, work / "int8" / "fused" / "dec.onnx")
    if g.fused_encoder_path is not None:  # quantized as its plain twin is (fp32 where that one is)
        fused_encoder = g.fused_encoder_path
        if encoder != g.encoder_path:
            # from the padded fused graph: dynamic quantization scales each product by the range of
            # its rows, padding's too in the plain graph, so the packed one's int8 answers differ
            padded = g.padded_fused_encoder_path or fused_encoder
            fused_encoder = to_int8_dynamic(padded, work / "int8" / "fused" / "enc.onnx")
    dec_report = decoder_parity(g, decoder, ParityReport(float("inf")))  # diffs recorded, not bounded
    enc_report = encoder_parity(g, encoder, ParityReport(float("inf")))
    malformed = MalformedGraph((*enc_report.errors, *dec_report.errors))  # a name, shape, dtype, NaN
    if not malformed.passed:
        return _refused_int8(ctx, dec_report if dec_report.errors else enc_report, malformed.reason())
    ctx.step("int8 gate")
    gate_report, gate = int8_gate(ctx, g, decoder, encoder)
    if gate.passed:
        step = checked_fused(ctx, g, decoder, fused)
        encoded = checked_fused_encoder(ctx, g, encoder, fused_encoder, decoder)
        return write_int8_entries(
            ctx, g, Int8Graph(encoder, enc_report, encoded), Int8Graph(decoder, dec_report, step), gate_report
        )
    return _refused_int8(ctx, gate_report, gate.reason())


def _refused_int8(ctx: ExportContext, report: ParityReport, reason: str) -> list[EntryResult]:
    """Every int8 entry refused for ``reason``: stale ones removed, the refusal remembered."""
    log.warning("%s: int8 entries refused: %s", ctx.name, reason)
    return [ctx.refuse(Entry(n, "int8"), report, reason) for n in int8_entry_names(ctx.name)]


def _quantized_encoder(g: TranslatorGraphs, path: Path) -> Path:
    """The encoder with its weight products quantized, or the fp32 graph itself where it has none (a
    recurrent encoder could hold all its weights in its GRU or LSTM nodes; Kiln's have a projection
    or two): ``<name>_encoder_int8`` is then a copy of the fp32 encoder (its parity, fp32's)."""
    try:
        return to_int8_dynamic(g.encoder_path, path)
    except NoWeightProducts:
        return g.encoder_path
