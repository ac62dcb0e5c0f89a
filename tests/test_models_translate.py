"""Every registered translator: shapes, the step interface, padding invariance, checkpoint round trip."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from training.checkpoint import load_checkpoint, make_checkpoint, rebuild_model, save_checkpoint
from training.decoding import decoder_inputs, init_state, update_state
from training.models import build_model, list_models

V_SRC, V_TGT = 40, 50
# Tiny configurations, one per registered translator (the coverage guard below keeps this complete).
TINY = {
    "transformer": {"d_model": 32, "heads": 4, "ffn_dim": 64, "encoder_layers": 2, "decoder_layers": 2},
    "gru_attention": {
        "embed_dim": 16,
        "hidden_size": 24,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "attention_dim": 20,
    },
    "lstm_attention": {
        "embed_dim": 16,
        "hidden_size": 24,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "attention_dim": 20,
    },
}
SRC = torch.tensor([[5, 6, 7, 2, 0, 0, 0], [8, 9, 10, 11, 12, 13, 2]])  # row 0 is padded
TGT = torch.tensor([[1, 5, 6, 7, 9], [1, 8, 9, 10, 11]])


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, src_vocab_size=V_SRC, tgt_vocab_size=V_TGT, **TINY[name]).eval()


def test_every_registered_translator_has_a_tiny_configuration():
    assert set(TINY) == set(list_models("translate"))


def run_steps(model, src, tgt, cache_prefix: int = 0):
    """Drive encode + decode_step generically from the step spec; optionally left-pad caches with junk
    entries that the cache mask must hide."""
    spec, enc = model.step_spec(), model.encode(src)
    state = init_state(
        spec, enc, src.shape[0], past=cache_prefix, cache_fill=lambda shape, **_: torch.randn(shape)
    )
    out = []
    for t in range(tgt.shape[1]):
        result = model.decode_step(decoder_inputs(spec, state, tgt[:, t], t))
        assert set(result) == set(spec["decoder"]["outputs"])
        for inp in spec["decoder"]["inputs"]:
            if inp["role"] == "cache":
                assert result[inp["output"]].shape[inp["axis"]] == 1
        out.append(result["log_probs"])
        state = update_state(spec, state, result)
    return torch.stack(out, dim=1)  # (B, T, V)


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_returns_logits_over_the_target_vocabulary(name):
    assert tiny(name)(SRC, TGT).shape == (2, 5, V_TGT)


@pytest.mark.parametrize("name", sorted(TINY))
def test_cached_incremental_decoding_equals_full_recomputation(name):
    model = tiny(name)
    with torch.no_grad():
        full = torch.log_softmax(model(SRC, TGT), dim=-1)
        steps = run_steps(model, SRC, TGT)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_sentence_is_translated_the_same_alone_or_padded_next_to_a_longer_one(name):
    model = tiny(name)
    with torch.no_grad():
        together = model(SRC, TGT)[0]
        alone = model(SRC[:1, :4], TGT[:1])[0]
        enc_together, enc_alone = model.encode(SRC), model.encode(SRC[:1, :4])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)
    assert enc_together["src_mask"][0].tolist() == [True] * 4 + [False] * 3
    for inp in model.step_spec()["decoder"]["inputs"]:
        if inp["role"] == "encoder":  # real positions of every encoder output agree too
            real = enc_together[inp["name"]][:1].narrow(inp["pad_axis"], 0, 4)
            torch.testing.assert_close(enc_alone[inp["name"]], real, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(TINY))
def test_step_spec_is_json_and_names_what_encode_and_decode_step_produce(name):
    model = tiny(name)
    spec = json.loads(json.dumps(model.step_spec()))
    with torch.no_grad():
        enc = model.encode(SRC)
    assert list(enc) == spec["encoder"]["outputs"]
    assert (spec["pad_id"], spec["bos_id"], spec["eos_id"], spec["vocab_size"]) == (0, 1, 2, V_TGT)
    for inp in spec["decoder"]["inputs"]:
        if inp["role"] == "encoder":
            assert inp["name"] in enc and enc[inp["name"]].dim() > inp["pad_axis"]
        if inp["role"] == "state":
            assert enc[inp["init"]].shape[0] == 2
    assert all(n in spec["dtypes"] for n in [*enc, *spec["decoder"]["outputs"]])


def test_transformer_cache_mask_hides_left_padded_cache_entries():
    model = tiny("transformer")
    with torch.no_grad():
        plain = run_steps(model, SRC, TGT)
        padded = run_steps(model, SRC, TGT, cache_prefix=3)
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=0)


def test_transformer_step_over_a_preallocated_cache_equals_a_grown_cache():
    """The serving-side growth scheme of docs/translator-interface.md: one buffer per cache with room for
    every step, each new entry written into its column in place, unwritten columns masked out."""
    model = tiny("transformer")
    spec, steps = model.step_spec(), TGT.shape[1]
    with torch.no_grad():
        enc = model.encode(SRC)
        state = init_state(spec, enc, 2, past=steps + 2, cache_fill=lambda shape, **_: torch.randn(shape))
        state["cache_mask"][:] = False
        out = []
        for t in range(steps):
            result = model.decode_step(decoder_inputs(spec, state, TGT[:, t], t))
            for inp in spec["decoder"]["inputs"]:
                if inp["role"] == "cache":
                    state[inp["name"]].narrow(inp["axis"], t, 1).copy_(result[inp["output"]])
            state["cache_mask"][:, t] = True
            out.append(result["log_probs"])
        grown = run_steps(model, SRC, TGT)
    torch.testing.assert_close(torch.stack(out, dim=1), grown, atol=1e-5, rtol=0)


def test_transformer_fused_attention_steps_compute_the_same_in_pytorch_and_are_scoped():
    """Inside ``fused_attention()`` the step's attentions go through the autograd functions that export
    as kiln.ai nodes: PyTorch computes exactly what the plain step does, and on leaving (even by an
    exception) every attention is plain again."""
    model = tiny("transformer")
    with torch.no_grad():
        plain = run_steps(model, SRC, TGT)
        with model.fused_attention():
            assert all(layer.self_attn.fused and layer.cross_attn.fused for layer in model.decoder_layers)
            fused = run_steps(model, SRC, TGT)
        with pytest.raises(RuntimeError), model.fused_attention():
            raise RuntimeError("export failed")
    assert not any(layer.self_attn.fused or layer.cross_attn.fused for layer in model.decoder_layers)
    assert torch.equal(fused, plain)


def test_transformer_encoder_for_serving_computes_real_positions_only_with_the_same_outputs():
    """Inside ``fused_attention()`` (the encoder graph serving runs) the encoder's products run on the
    real positions only (packed rows) and are unpacked for each attention and for the outputs: the
    same outputs bit for bit as the padded encoder, whose cross-attention keys and values are zero at
    padded positions (the padding an interface's ``pad_axis`` leaves inert, made one value)."""
    model = tiny("transformer")
    src = torch.tensor([[5, 6, 7, 2, 0, 0, 0], [8, 9, 10, 11, 12, 13, 2], [14, 2, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        plain = model.encode(src)
        with model.fused_attention():
            packed = model.encode(src)
    assert plain.keys() == packed.keys() and all(torch.equal(plain[k], packed[k]) for k in plain)
    padded = ~plain["src_mask"]  # (B, S)
    assert padded.sum() == 8
    for name in [k for k in plain if k.startswith("cross_")]:
        assert plain[name].shape[2] == src.shape[1]
        assert not plain[name].permute(0, 2, 1, 3)[padded].any()  # (B, S, h, hd) at padded positions
        assert plain[name].permute(0, 2, 1, 3)[~padded].abs().sum(-1).all()  # the real ones are not zero


@pytest.mark.parametrize("name", sorted(TINY))
def test_checkpoint_round_trip_gives_identical_outputs(name, tmp_path):
    model = tiny(name)
    args = {"src_vocab_size": V_SRC, "tgt_vocab_size": V_TGT, **TINY[name]}
    ckpt = make_checkpoint(
        task="translate", model_name=name, model_args=args, model=model, train_config={}, metrics={}
    )
    restored = rebuild_model(load_checkpoint(save_checkpoint(ckpt, tmp_path / f"{name}.pt")))
    with torch.no_grad():
        assert torch.equal(restored(SRC, TGT), model(SRC, TGT))


def test_unknown_rnn_type_and_bad_heads_are_refused():
    with pytest.raises(ValueError, match="rnn_type='gru'"):
        build_model("gru_attention", rnn_type="lstm")
    with pytest.raises(ValueError, match="not divisible"):
        build_model("transformer", d_model=30, heads=4)


@pytest.mark.parametrize("fused", [False, True])
def test_the_transformer_step_reads_a_store_of_sentences_through_row_place(fused):
    """Rows in any order over a store of sentences (some places unused, some read by several rows)
    compute what each row computes with its own copy of its sentence's encoder outputs, with the plain
    attention and with the fused operators' PyTorch side alike."""
    from export.translator_feeds import decoder_inputs as step_feeds

    model = tiny("transformer")
    spec = model.step_spec()
    spec["vocab_size_src"] = V_SRC
    per_row = step_feeds(model, spec, {"batch": 6, "src_len": 5, "past_len": 3}, seed=4)
    encoder = [i["name"] for i in spec["decoder"]["inputs"] if i["role"] == "encoder"]
    # a store of 8 places: row r's sentence at place order[r]; places 2 and 6 hold junk nobody reads
    order = torch.tensor([5, 0, 7, 3, 1, 4])
    store = {}
    for name in encoder:
        value = per_row[name]
        junk = torch.full((8, *value.shape[1:]), 7, dtype=value.dtype)
        junk[order] = value
        store[name] = junk
    indexed = {**per_row, **store, "row_place": order}
    context = model.fused_attention() if fused else contextlib.nullcontext()
    with torch.no_grad(), context:
        want = model.decode_step(dict(per_row))
        got = model.decode_step(indexed)
    assert want.keys() == got.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)
