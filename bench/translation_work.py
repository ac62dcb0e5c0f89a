"""The arithmetic a translation workload needs, and how much of the machine's float32 product speed
each engine turns into tokens.

A translator's encoder and decoder steps are mostly weight products (``Gemm`` / ``MatMul`` with an
initializer operand: 2 x its elements per row). Their count for a workload is fixed by the model and
the search: the encoder's per source token, the decoder's per row a step runs. :func:`measure` counts
them for the held-out sentences by running Kiln's batch engine (beam 4, batches of 32) over plain
ONNX Runtime runners that tally the rows they are handed, and divides by the target tokens produced
(counted as every row's ``tokens_per_s`` counts them): MFLOP a token. Against the speed of this
machine's float32 product at the decoder's size (:func:`bench.machine.speed_probe`, one thread, times
the usable cores), that gives the tokens/s no engine can pass without doing less arithmetic (int8,
a smaller model, a shorter search), and each row's share of it, so a target that asks for more than
the machine's arithmetic allows says so in the report. The attention products over caches and source
positions, softmax, normalization and the search itself are left out: the real bound is lower.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.translation_rows import MAX_LENGTH

BATCH = 32


def weight_flops(model_file: Path | str) -> int:
    """Floating-point operations a row of ``model_file``'s weight products costs: 2 x the elements of
    the initializer operand of every ``Gemm`` and ``MatMul`` (per row of their other operand)."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    return sum(
        2 * sizes[name]
        for node in model.graph.node
        if node.op_type in ("Gemm", "MatMul")
        for name in node.input[:2]
        if name in sizes
    )


def measure(
    repository: Path, model: str, texts: list[str], count: Any, beam: int = 4, max_length: int = MAX_LENGTH
) -> dict[str, Any]:
    """The weight products ``texts`` need through ``model``'s translator at ``beam`` (see the module's
    docstring): decoder rows and source tokens run, ids generated (the best hypotheses', EOS included),
    target tokens made (as ``count`` counts a row's), MFLOP a target token. ``max_length``: the
    workload's (:attr:`bench.translation_rows.Workload.max_length`)."""
    from bench.translation_engines import _options
    from serving.decoding.native_decoder import open_runner
    from serving.decoding.offline import translate_in_batches
    from serving.decoding.translator import translator_from_entry
    from serving.execution.repository import Repository
    from serving.execution.version_policy import served_version

    entry = Repository(repository).get(model)
    block = entry.kiln["translator"]
    # the version each entry's version_policy serves, as the gateway opens it (not always 1: --version)
    files = {
        part: Path(served_version(str(Path(repository) / block[part]))) / "model.onnx"
        for part in ("encoder", "decoder")
    }
    run = {part: open_runner(path) for part, path in files.items()}  # plain: every call seen here
    tally = {"decoder_rows": 0, "source_tokens": 0}
    translator = translator_from_entry(entry.path, entry.kiln, run["encoder"], run["decoder"])
    spec = translator.schedulers[0].spec
    pad = spec.pad_id

    def decoder(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tally["decoder_rows"] += int(feed[spec.with_role("tokens")[0].name].shape[0])
        return run["decoder"](feed)

    def encoder(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tally["source_tokens"] += int(np.count_nonzero(feed[spec.encoder_inputs[0]] != pad))
        return run["encoder"](feed)

    config = translator.beam_config(_options(beam, max_length))
    ids = [i for k in range(0, len(texts), BATCH) for i in translator.source_ids(texts[k : k + BATCH])]
    found = translate_in_batches(encoder, decoder, spec, ids, config, BATCH)
    tokens = count(translator.codec.decode([h[0].tokens for h in found]))
    tally["generated_ids"] = sum(len(h[0].tokens) for h in found)  # EOS included
    per_row = {part: weight_flops(path) for part, path in files.items()}
    total = tally["decoder_rows"] * per_row["decoder"] + tally["source_tokens"] * per_row["encoder"]
    return {
        "sentences": len(texts),
        "beam": beam,
        **tally,
        "target_tokens": tokens,
        "mflop_a_row": {part: round(flops / 1e6, 3) for part, flops in per_row.items()},
        "mflop_a_token": round(total / max(1, tokens) / 1e6, 3),
    }


def ceiling(work: dict[str, Any], gflops_a_core: float, cores: int) -> float:
    """Target tokens/s at which the weight products alone take every core at ``gflops_a_core``."""
    return gflops_a_core * 1e9 * cores / (work["mflop_a_token"] * 1e6)


def share_lines(work: dict[str, Any], gflops_a_core: float, cores: int, rows: dict[str, float]) -> list[str]:
    """The report's lines: the workload's arithmetic, the ceiling, and each of ``rows`` (engine ->
    tokens/s) as a share of it."""
    top = ceiling(work, gflops_a_core, cores)
    lines = [
        f"{work['mflop_a_token']:.2f} MFLOP of weight products a target token ({work['decoder_rows']} decoder "
        f"rows and {work['source_tokens']} source tokens for {work['target_tokens']} target tokens of "
        f"{work['sentences']} sentences, beam {work['beam']}; a decoder row {work['mflop_a_row']['decoder']} "
        f"MFLOP, a source token {work['mflop_a_row']['encoder']}); at {gflops_a_core:.1f} GFLOP/s a core "
        f"(the speed probe's float32 product) x {cores} cores: at most {top:,.0f} tokens/s"
    ]
    lines += [
        f"{engine}: {tokens_per_s:,.0f} tokens/s, {tokens_per_s / top:.0%} of it"
        for engine, tokens_per_s in rows.items()
    ]
    return lines
