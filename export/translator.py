"""Translator export: ``<name>_encoder`` and ``<name>_decoder`` ONNX graphs plus the ``<name>`` python entry.

Everything is driven by the model's own step spec (docs/translator-interface.md): tensor shapes are
probed through ``encode`` / ``decode_step``, never looked up by model name. Parity covers both graphs
at several batch sizes and lengths, then beam search over ONNX against the PyTorch reference. With
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

from export.freeze import freeze
from export.onnx_export import DecoderGraph, EncoderGraph, export_onnx
from export.parity import ParityReport, check_feeds, ort_session, session_runner, torch_runner
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
SENTENCES = "sentences"  # the batch axis of a row_place decoder's encoder inputs (its store)
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


def random_source(spec: dict[str, Any], batch: int, src_len: int, rng: np.random.Generator) -> torch.Tensor:
    """Random ids ending in EOS and right-padded to ``src_len`` (row 0 is never padded)."""
    src = rng.integers(4, spec["vocab_size_src"], size=(batch, src_len))
    lengths = rng.integers(1, src_len + 1, size=batch)
    lengths[0] = src_len
    for row, n in enumerate(lengths):
        src[row, n - 1] = spec["eos_id"]
        src[row, n:] = spec["pad_id"]
    return torch.from_numpy(src.astype(np.int64))


def decoder_inputs(
    model: torch.nn.Module, spec: dict[str, Any], sizes: dict[str, int], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Decoder feeds built by role (training.decoding's own state code): real encoder outputs, random
    caches of ``past_len`` entries, and rows after the first left-padded as if they joined later."""
    from training.decoding import decoder_inputs as step_inputs
    from training.decoding import init_state

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    rows, past = sizes["batch"], sizes["past_len"]
    with torch.no_grad():
        encoded = model.encode(random_source(spec, rows, sizes["src_len"], rng))
    valid = torch.ones(rows, past, dtype=torch.bool)
    valid[1:, :1] = False
    state = init_state(
        spec,
        encoded,
        rows,
        past=past,
        past_valid=valid,
        cache_fill=lambda shape, **_: torch.randn(*shape, generator=gen),
    )
    tokens = torch.from_numpy(rng.integers(4, spec["vocab_size"], size=rows).astype(np.int64))
    return step_inputs(spec, state, tokens, past)


def indexed_inputs(
    spec: dict[str, Any], feeds: dict[str, Any], sentences: int, seed: int = 0
) -> dict[str, Any]:
    """Per-row decoder feeds made indexed, as the decoding engine feeds them: the encoder inputs of
    ``sentences`` rows taken as a store, and each row reading a random place of it (``row_place``)."""
    rows = len(feeds[spec["decoder"]["inputs"][0]["name"]])
    if not 0 < sentences <= rows:
        raise ValueError(f"a store of {sentences} sentences from {rows} rows")
    gen = torch.Generator().manual_seed(seed)
    place = torch.randint(0, sentences, (rows,), generator=gen)
    place[: min(rows, 2)] = sentences - 1  # the last place read, and twice
    out = dict(feeds)
    for inp in spec["decoder"]["inputs"]:
        if inp["role"] == "encoder":
            out[inp["name"]] = feeds[inp["name"]][torch.randperm(rows, generator=gen)[:sentences]]
        elif inp["role"] == "row_place":
            out[inp["name"]] = place
    return out


def _indexed(spec: dict[str, Any]) -> bool:
    return any(inp["role"] == "row_place" for inp in spec["decoder"]["inputs"])


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
    if _indexed(spec):  # encoder inputs: a batch axis of their own (the store's places)
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
    if _indexed(spec):  # a store of 4 places for 6 rows: the two batch axes differ
        feeds = indexed_inputs(spec, feeds, 4)
    example = tuple(feeds[n] for n in dec.input_names)
    dec_path = export_onnx(dec_module, dec, example, work / "dec.onnx")
    fused = _export_fused(ctx, frozen, dec_module, dec, example, work / "fused" / "dec.onnx", "decoder")
    enc_example = (random_source(spec, 3, 5, np.random.default_rng(2)),)
    fused_encoder = _export_fused(
        ctx, frozen, enc_module, enc, enc_example, work / "fused" / "enc.onnx", "encoder"
    )
    padded_encoder = None
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
) -> Path | None:
    """The decoder step or the encoder (``what``) with its attentions as ``kiln.ai`` operators, for a
    model that has them (``fused_attention``, the Transformer) where the compiled kernels load;
    TorchScript exporter (its ``symbolic`` hook emits the custom nodes). None otherwise: serving then
    runs ``model.onnx``. ``packed``: the encoder computes its real positions only (``fused_attention``)."""
    if not hasattr(frozen, "fused_attention"):
        return None
    from serving.decoding import native

    if native.load() is None:
        log.warning(
            "%s: no compiled attention operators here (no C compiler?): no fused %s graph", ctx.name, what
        )
        return None
    ctx.step(f"export {what} (fused attention{'' if packed else ', padded'})")
    with frozen.fused_attention(packed=packed):
        return export_onnx(module, dataclasses.replace(spec, dynamo=False), example, path)


def _checked_fused(
    ctx: ExportContext, g: TranslatorGraphs, plain: Path, fused: Path | None
) -> FusedStep | None:
    """``fused`` (the fused-attention twin of the decoder graph ``plain``) checked against PyTorch at the
    decoder's tolerance (an int8 one: its diffs recorded, as the int8 graph's are) and by beam search
    against ``plain`` (100 % identical); refused, with a warning, when a check fails (serving then
    runs ``plain``)."""
    if fused is None:
        return None
    from export.beam_parity import fused_agreement

    ctx.step("fused attention parity")
    fp32 = plain == g.decoder_path  # int8: its diffs from PyTorch are the quantization's, recorded only
    parity = decoder_parity(g, fused, ParityReport(g.decoder.atol if fp32 else float("inf")))
    beams = fused_agreement(ctx, g, plain, fused)
    problems = parity.errors + beams.errors  # int8: only a malformed output errs
    if problems:
        log.warning("%s: fused step graph refused: %s", ctx.name, problems[0])
        return FusedStep(None, parity, beams, reason=problems[0])
    return FusedStep(fused, parity, beams)


def _checked_fused_encoder(
    ctx: ExportContext, g: TranslatorGraphs, plain: Path, fused: Path | None, decoder: Path
) -> FusedStep | None:
    """``fused`` (the fused-attention twin of the encoder graph ``plain``) checked against PyTorch at the
    encoder's tolerance (an int8 one: its diffs recorded) and by beam search with ``decoder`` against
    ``plain`` (100 % identical); refused, with a warning, when a check fails (serving then runs
    ``plain``)."""
    if fused is None:
        return None
    from export.beam_parity import fused_agreement

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
    if _indexed(g.spec):
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
    from export.beam_parity import beam_parity

    beam_report = beam_parity(ctx, graphs)
    beam_report.raise_if_failed(f"{ctx.name} (beam search over ONNX vs PyTorch)")
    fused = _checked_fused(ctx, graphs, graphs.decoder_path, graphs.fused_decoder_path)
    fused_encoder = _checked_fused_encoder(
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
    from export.beam_parity import int8_gate

    ctx.step("int8 encoder and decoder")
    decoder = to_int8_dynamic(g.decoder_path, work / "int8" / "dec.onnx")
    encoder = _quantized_encoder(g, work / "int8" / "enc.onnx")
    fused = fused_encoder = None
    if g.fused_decoder_path is not None:
        fused = to_int8_dynamic(g.fused_decoder_path, work / "int8" / "fused" / "dec.onnx")
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
        step = _checked_fused(ctx, g, decoder, fused)
        encoded = _checked_fused_encoder(ctx, g, encoder, fused_encoder, decoder)
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
