"""Random inputs for a translator's graphs, built by role from its step spec: sources ending in EOS,
decoder feeds over real encoder outputs and random caches, and indexed feeds (rows over a store of
sentences) for decoders that take ``row_place``.

The export probes the graphs' shapes and traces them with these, and the parity checks
(:mod:`export.translator_parity`) compare ONNX with PyTorch on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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


def is_indexed(spec: dict[str, Any]) -> bool:
    """Whether the decoder's rows read a store of sentences (a ``row_place`` input)."""
    return any(inp["role"] == "row_place" for inp in spec["decoder"]["inputs"])
