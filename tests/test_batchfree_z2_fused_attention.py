"""A sentence's translation does not depend on what it is batched with, over the fused-attention graph
the gateway opens (``model.fused.onnx``, ``serving/decoding/attention.c``): a short source padded to a
long neighbour's width, or a sentence joining a running batch at a later cache column, gets bit for bit
the tokens and scores it gets alone. Its AVX2 dot products once reduced a key's lanes in another order
when the key fell outside a group of four, so its score moved with the padded width (~1e-6).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.decoding import native, native_decoder, offline
from serving.decoding import step_spec as sp
from serving.decoding import stepper as st
from serving.decoding.options import DecodingOptions, config_for
from tests.test_native_decoder import transformer_runners

pytestmark = pytest.mark.skipif(
    native_decoder._c_library() is None, reason="no C compiler or no ONNX Runtime C library here"
)


@pytest.fixture(scope="module")
def fused(exported_translator_models, tmp_path_factory):
    """(spec, encoder runner, decoder runner over the fused graph, source ids of mixed lengths)."""
    spec, runner, sources = transformer_runners(exported_translator_models, tmp_path_factory, "batchfree", 12)
    decoder = runner("decoder")
    assert Path(decoder.model_file).name == native.FUSED_GRAPH  # the decoder the gateway opens
    return spec, runner("encoder"), decoder, sources


def _config(spec, beam: int):
    return config_for(
        DecodingOptions(beam_size=beam, n_best=beam, max_length=24), eos_id=spec.eos_id, bos_id=spec.bos_id
    )


def _plain(hypotheses):
    return [(h.tokens, h.score, h.normalized_score) for h in hypotheses]


@pytest.mark.parametrize("beam", [1, 4])
def test_a_sentence_padded_to_a_longer_neighbours_width_decodes_bit_for_bit_as_alone(fused, beam):
    spec, encoder, decoder, sources = fused
    config = _config(spec, beam)
    longest = max(sources, key=len)
    alone = [_plain(offline.translate_ids(encoder, decoder, spec, [s], config)[0]) for s in sources]
    beside = [_plain(offline.translate_ids(encoder, decoder, spec, [s, longest], config)[0]) for s in sources]
    assert beside == alone


def test_a_sentence_joining_a_running_batch_later_decodes_bit_for_bit_as_alone(fused):
    spec, encoder, decoder, sources = fused
    config = _config(spec, 4)
    longest = max(sources, key=len)
    for source in sources[:6]:
        alone = _plain(offline.translate_ids(encoder, decoder, spec, [source], config)[0])
        for wait in (1, 3):
            batch = st.DecodeBatch(spec, indexed=sp.takes_indexed_rows(spec, decoder))
            batch.join([1], encoder(sp.encoder_inputs(spec, [longest])), [config], [len(longest) + 1])
            done = {}
            for _ in range(wait):
                done |= {d.key: d.hypotheses for d in batch.step(decoder, steps=1)}
            batch.join([0], encoder(sp.encoder_inputs(spec, [source])), [config], [len(source) + 1])
            while batch.size:
                done |= {d.key: d.hypotheses for d in batch.step(decoder, steps=1)}
            assert _plain(done[0]) == alone, (source, wait)
