"""The translators' math against independent references: torch's own modules with the same weights, a
hand-written attention, an exhaustive search, sentences alone vs padded in a batch (PyTorch and the
exported ONNX graphs), and the arguments the reference search and the model configs refuse."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from serving.decoding import beam_search as serving_search
from training import decoding
from training.models import build_model, list_models
from training.models.transformer import TransformerConfig

V_SRC, V_TGT = 40, 50
EOS = 2
SRC = torch.tensor([[5, 6, 7, 2, 0, 0, 0, 0], [8, 9, 10, 11, 12, 13, 14, 2], [4, 2, 0, 0, 0, 0, 0, 0]])
TGT = torch.tensor([[1, 5, 6, 7, 9, 0, 0], [1, 8, 9, 10, 11, 12, 13], [1, 3, 0, 0, 0, 0, 0]])
RECURRENT = {"embed_dim": 6, "hidden_size": 5, "encoder_layers": 3, "decoder_layers": 2, "attention_dim": 7}
SMALL = {
    "transformer": {"d_model": 8, "heads": 2, "ffn_dim": 16, "encoder_layers": 2, "decoder_layers": 2},
    "gru_attention": RECURRENT,
    "lstm_attention": RECURRENT,
}


def random_translator(name: str, src_vocab: int = V_SRC, tgt_vocab: int = V_TGT, seed: int = 0) -> nn.Module:
    """A small translator whose every weight (padding rows and biases too) is random: nothing the
    masks should hide is zero by luck."""
    torch.manual_seed(seed)
    model = build_model(name, src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, **SMALL[name]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def test_every_registered_translator_is_checked_here():
    assert set(SMALL) == set(list_models("translate"))


# --- against torch's own modules and a hand-written attention ------------------------------------------


def _copy_attention(dst: nn.MultiheadAttention, src: nn.Module) -> None:
    dst.in_proj_weight.copy_(torch.cat([src.q_proj.weight, src.k_proj.weight, src.v_proj.weight]))
    dst.in_proj_bias.copy_(torch.cat([src.q_proj.bias, src.k_proj.bias, src.v_proj.bias]))
    dst.out_proj.weight.copy_(src.out_proj.weight)
    dst.out_proj.bias.copy_(src.out_proj.bias)


def _copy_norms_and_ffn(dst: nn.Module, norms: list[nn.LayerNorm], ffn: nn.Sequential) -> None:
    for i, ours in enumerate(norms, start=1):
        getattr(dst, f"norm{i}").load_state_dict(ours.state_dict())
    dst.linear1.load_state_dict(ffn[0].state_dict())
    dst.linear2.load_state_dict(ffn[3].state_dict())


def torch_transformer_like(model: nn.Module) -> nn.Transformer:
    """``nn.Transformer`` (pre-norm, ReLU, final norms: what the Transformer's docstring claims) holding
    ``model``'s weights."""
    cfg = model.cfg
    ref = nn.Transformer(
        cfg.d_model,
        cfg.heads,
        cfg.encoder_layers,
        cfg.decoder_layers,
        cfg.ffn_dim,
        dropout=0.0,
        batch_first=True,
        norm_first=True,
    ).eval()
    with torch.no_grad():
        for theirs, ours in zip(ref.encoder.layers, model.encoder_layers, strict=True):
            _copy_attention(theirs.self_attn, ours.self_attn)
            _copy_norms_and_ffn(theirs, [ours.self_attn_norm, ours.ffn_norm], ours.ffn)
        for theirs, ours in zip(ref.decoder.layers, model.decoder_layers, strict=True):
            _copy_attention(theirs.self_attn, ours.self_attn)
            _copy_attention(theirs.multihead_attn, ours.cross_attn)
            _copy_norms_and_ffn(theirs, [ours.self_attn_norm, ours.cross_attn_norm, ours.ffn_norm], ours.ffn)
        ref.encoder.norm.load_state_dict(model.encoder_norm.state_dict())
        ref.decoder.norm.load_state_dict(model.decoder_norm.state_dict())
    return ref


def fairseq_positions(length: int, dim: int) -> torch.Tensor:
    """fairseq's ``SinusoidalPositionalEmbedding`` table (without its padding offset), [sin | cos]."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
def test_the_transformer_equals_torch_pre_norm_transformer_with_the_same_weights():
    model = random_translator("transformer")
    ref = torch_transformer_like(model)
    d, t = model.cfg.d_model, TGT.shape[1]
    torch.testing.assert_close(model.positions[:10], fairseq_positions(10, d), atol=0, rtol=0)
    with torch.no_grad():
        src = model.src_embed(SRC) * math.sqrt(d) + fairseq_positions(SRC.shape[1], d)
        tgt = model.tgt_embed(TGT) * math.sqrt(d) + fairseq_positions(t, d)
        causal = nn.Transformer.generate_square_subsequent_mask(t)
        padding = SRC.eq(model.cfg.pad_id)
        out = ref(
            src,
            tgt,
            tgt_mask=causal,
            tgt_is_causal=True,
            src_key_padding_mask=padding,
            memory_key_padding_mask=padding,
        )
        torch.testing.assert_close(model(SRC, TGT), out @ model.output_proj.weight.T, atol=1e-5, rtol=0)


def additive_attention_decoder(model: nn.Module, enc: dict, tokens: torch.Tensor, src_mask: torch.Tensor):
    """The recurrent decoder written out a step at a time: torch's GRU/LSTM cells per layer, Bahdanau
    scores ``v . tanh(W_q q + W_k m)`` over the unmasked memory, the documented output layer."""
    rnn, lstm = model.decoder, model.is_lstm
    hidden = list(enc["hidden0"].transpose(0, 1))
    cell = list(enc["cell0"].transpose(0, 1)) if lstm else None
    logits = []
    for t in range(tokens.shape[1]):
        emb = model.tgt_embed(tokens[:, t])
        x = emb
        for i in range(rnn.num_layers):
            w = [getattr(rnn, f"{p}_l{i}") for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if lstm:
                hidden[i], cell[i] = torch._VF.lstm_cell(x, (hidden[i], cell[i]), *w)
            else:
                hidden[i] = torch._VF.gru_cell(x, hidden[i], *w)
            x = hidden[i]
        keys = enc["memory"] @ model.memory_proj.weight.T  # (B, S, A)
        energy = torch.tanh(model.query_proj(x)[:, None, :] + keys)
        scores = (energy @ model.score.weight.T).squeeze(-1).masked_fill(~src_mask, -math.inf)
        context = (F.softmax(scores, dim=-1)[:, :, None] * enc["memory"]).sum(dim=1)
        logits.append(model.output_proj(torch.tanh(model.combine(torch.cat([x, context, emb], dim=1)))))
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("name", ["gru_attention", "lstm_attention"])
def test_the_recurrent_translators_equal_torch_packed_rnns_and_a_hand_written_bahdanau_decoder(name):
    model = random_translator(name)
    cfg = model.cfg
    ref = type(model.decoder)(  # nn.GRU or nn.LSTM
        cfg.embed_dim, cfg.hidden_size, cfg.encoder_layers, batch_first=True, bidirectional=True
    )
    with torch.no_grad():
        for i, (fw, bw) in enumerate(
            zip(model.encoder.forward_rnns, model.encoder.backward_rnns, strict=True)
        ):
            for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{p}_l{i}").copy_(getattr(fw, f"{p}_l0"))
                getattr(ref, f"{p}_l{i}_reverse").copy_(getattr(bw, f"{p}_l0"))
        mask = SRC.ne(cfg.pad_id)
        packed = pack_padded_sequence(
            model.src_embed(SRC), mask.sum(1), batch_first=True, enforce_sorted=False
        )
        out, final = ref(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=SRC.shape[1])
        final = final[0] if model.is_lstm else final
        enc = model.encode(SRC)
        torch.testing.assert_close(enc["memory"] * mask[:, :, None], memory, atol=1e-6, rtol=0)
        hidden0 = torch.tanh(model.bridge(torch.cat([final[-2], final[-1]], dim=1)))
        torch.testing.assert_close(enc["hidden0"].flatten(1), hidden0, atol=1e-6, rtol=0)
        expected = additive_attention_decoder(model, enc, TGT, mask)
        torch.testing.assert_close(model(SRC, TGT), expected, atol=1e-5, rtol=0)


# --- padding and causality in PyTorch -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_sentence_gets_the_same_logits_alone_as_padded_beside_longer_ones(name):
    model = random_translator(name)
    with torch.no_grad():
        together = model(SRC, TGT)
        for b in range(SRC.shape[0]):
            s, t = int((SRC[b] != 0).sum()), int((TGT[b] != 0).sum())
            alone = model(SRC[b : b + 1, :s], TGT[b : b + 1, :t])[0]
            torch.testing.assert_close(alone, together[b, :t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_logits_at_a_position_do_not_see_the_tokens_after_it(name):
    model = random_translator(name)
    later = TGT.clone()
    later[:, 4:] = torch.randint(3, V_TGT, later[:, 4:].shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(SRC, later)[:, :4], model(SRC, TGT)[:, :4], atol=0, rtol=0)


# --- the reference beam search against an exhaustive search ------------------------------------------


def documented_score(score: float, length: int, penalty: str, alpha: float) -> float:
    """docs/translator-interface.md's length penalties; ``length`` counts the tokens with the EOS."""
    divisor = {"none": 1.0, "average": length**alpha, "gnmt": ((5 + length) / 6) ** alpha}[penalty]
    return score / divisor


def exhaustive(model, src, vocab: int, max_length: int, min_length: int, penalty: str, alpha: float):
    """Every hypothesis the contract allows (EOS only from ``min_length`` generated tokens on, at most
    ``max_length`` tokens with the EOS), scored by teacher forcing, best normalized score first."""
    out = []
    for n in range(min_length, max_length):
        for body in itertools.product([t for t in range(vocab) if t != EOS], repeat=n):
            seq = torch.tensor([[*body, EOS]])
            score = decoding.teacher_forced_logprob(model, src, seq).item()
            out.append((seq[0].tolist(), documented_score(score, n + 1, penalty, alpha)))
    return sorted(out, key=lambda h: -h[1])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_beam_as_wide_as_every_hypothesis_finds_the_exhaustive_ranking(name):
    vocab, max_length = 5, 3
    model = random_translator(name, src_vocab=vocab, tgt_vocab=vocab, seed=1)
    src = torch.tensor([[3, 4, EOS]])
    for min_length, penalty, alpha in ((0, "none", 1.0), (0, "average", 1.0), (1, "gnmt", 0.7)):
        beam = vocab**max_length
        options = {"max_length": max_length, "min_length": min_length, "length_penalty": penalty}
        found = decoding.beam_search(model, src, beam_size=beam, n_best=beam, alpha=alpha, **options)[0]
        expected = exhaustive(model, src, vocab, max_length, min_length, penalty, alpha)
        assert [h.tokens for h in found] == [tokens for tokens, _ in expected]
        assert [h.normalized_score for h in found] == pytest.approx([s for _, s in expected], abs=1e-5)


# --- the loss and BLEU ------------------------------------------------------------------------------------


def test_the_training_loss_is_the_label_smoothed_mean_over_real_target_tokens():
    from training.data.text_batches import collate
    from training.translate_setup import loss_on

    model = random_translator("transformer")
    batch = collate([([5, 6, 2], [7, 8, 9]), ([4, 2], [3])])
    eps = 0.1
    with torch.no_grad():
        lp = torch.log_softmax(model(batch.src, batch.tgt_in), dim=-1)[batch.tgt_mask]  # (N, V)
        gold = lp.gather(1, batch.tgt_out[batch.tgt_mask][:, None]).squeeze(1)
        hand = (-(1 - eps) * gold - eps * lp.mean(dim=1)).mean()
        torch.testing.assert_close(loss_on(model, batch, eps), hand, atol=1e-5, rtol=0)
    assert batch.n_tokens == 4 + 2  # targets with their EOS, no padding


def test_bleu_follows_the_papers_brevity_penalty_on_a_hand_computed_case():
    from training.translation_eval import score_translations

    # one 4-word hypothesis, every n-gram matching, against a 6-word reference: BP = exp(1 - 6/4)
    scores = score_translations(["a b c d"], ["a b c d e f"])
    assert scores["bleu"] == pytest.approx(100 * math.exp(1 - 6 / 4), abs=1e-3)
    assert scores["exact_match"] == 0.0
    assert score_translations(["a b c d"], ["a b c d"]) == {"bleu": 100.0, "exact_match": 100.0}


# --- the exported graphs: a sentence alone vs padded in a batch ------------------------------------------


def _session(path):
    import onnxruntime as ort

    from serving.decoding import native

    options = native.session_options(path, ort.SessionOptions())
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, feeds: dict) -> dict:
    names = {i.name for i in session.get_inputs()}
    outputs = session.run(None, {k: v for k, v in feeds.items() if k in names})
    return dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))


def decode_rows(spec, encoded, decoder, targets, starts):
    """Teacher-force ``targets[r]`` through the decoder graph, row ``r`` joining at tick ``starts[r]``:
    each tick one call over the rows then running, caches right-padded with masked junk to the longest
    (rows of different lengths and positions share every call). Returns each row's log-probs."""
    inputs, rng = spec["decoder"]["inputs"], np.random.default_rng(0)
    caches = [i for i in inputs if i["role"] == "cache"]
    state = [{} for _ in targets]
    for r, row in enumerate(state):
        for inp in inputs:
            if inp["role"] in ("encoder", "state"):
                row[inp["name"]] = encoded[inp["name"] if inp["role"] == "encoder" else inp["init"]][r]
            elif inp["role"] == "cache":
                row[inp["name"]] = np.zeros(inp["init_shape"][1:], np.float32)
    out = [[] for _ in targets]
    for tick in range(max(s + len(t) for s, t in zip(starts, targets, strict=True))):
        rows = [r for r, (s, t) in enumerate(zip(starts, targets, strict=True)) if s <= tick < s + len(t)]
        feeds = {}
        for inp in inputs:
            name, role = inp["name"], inp["role"]
            if role == "tokens":
                feeds[name] = np.array([targets[r][tick - starts[r]] for r in rows], np.int64)
            elif role == "positions":
                feeds[name] = np.array([tick - starts[r] for r in rows], np.int64)
            elif role == "row_place":
                feeds[name] = np.arange(len(rows), dtype=np.int64)
            elif role in ("encoder", "state"):
                feeds[name] = np.stack([state[r][name] for r in rows])
        past = [state[r][caches[0]["name"]].shape[caches[0]["axis"] - 1] if caches else 0 for r in rows]
        for inp in caches:
            ax, width = inp["axis"] - 1, max(past)
            parts = []
            for r, n in zip(rows, past, strict=True):
                junk = list(state[r][inp["name"]].shape)
                junk[ax] = width - n
                parts.append(
                    np.concatenate([state[r][inp["name"]], rng.normal(size=junk).astype(np.float32)], ax)
                )
            feeds[inp["name"]] = np.stack(parts)
        for inp in inputs:
            if inp["role"] == "cache_mask":
                feeds[inp["name"]] = np.arange(max(past))[None, :] < np.array(past)[:, None]
        result = _run(decoder, feeds)
        for j, r in enumerate(rows):
            out[r].append(result["log_probs"][j])
            for inp in inputs:
                if inp["role"] == "state":
                    state[r][inp["name"]] = result[inp["output"]][j]
                elif inp["role"] == "cache":
                    new = result[inp["output"]][j]
                    state[r][inp["name"]] = np.concatenate([state[r][inp["name"]], new], inp["axis"] - 1)
    return [np.stack(rows) for rows in out]


def test_exported_graphs_give_a_sentence_the_same_outputs_alone_as_padded_in_a_mixed_batch(
    exported_translator_models,
):
    root, errors = exported_translator_models
    repository = root / "model_repository"
    sources = [[5, 6, 7, 2], [8, 9, 10, 11, 12, 13, 14, 15, 2], [4, 2]]
    targets = [[1, 5, 6, 7, 9], [1, 8, 9, 10, 11, 12, 13, 14], [1, 3, 4]]
    width = max(map(len, sources))
    batch = np.array([s + [0] * (width - len(s)) for s in sources], np.int64)
    checked = []
    for name in ("transformer", "gru_attention"):
        assert name not in errors, errors
        meta = json.loads((repository / name / "kiln.json").read_text())
        spec, entries = meta["step_spec"], meta["translator"]
        for graph in ("model.onnx", "model.fused.onnx"):
            paths = [repository / entries[part] / "1" / graph for part in ("encoder", "decoder")]
            if not all(p.is_file() for p in paths):
                continue
            encoder, decoder = _session(paths[0]), _session(paths[1])
            encoded = _run(encoder, {"src_ids": batch})
            together = decode_rows(spec, encoded, decoder, targets, starts=[2, 0, 4])
            pad_axes = {i["name"]: i["pad_axis"] for i in spec["decoder"]["inputs"] if i["role"] == "encoder"}
            for r, source in enumerate(sources):
                alone = _run(encoder, {"src_ids": np.array([source], np.int64)})
                for out, axis in pad_axes.items():
                    real = np.take(encoded[out][r : r + 1], range(len(source)), axis=axis)
                    np.testing.assert_allclose(alone[out], real, atol=1e-5, rtol=0, err_msg=f"{name} {out}")
                expected = decode_rows(spec, alone, decoder, [targets[r]], starts=[0])[0]
                np.testing.assert_allclose(
                    together[r], expected, atol=1e-5, rtol=0, err_msg=f"{name} {graph}"
                )
            checked.append((name, graph))
    assert ("transformer", "model.onnx") in checked and ("gru_attention", "model.onnx") in checked


# --- what the configs and the reference search refuse --------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ({"pad_id": V_SRC}, "pad_id must be an id inside the vocabularies"),
        ({"eos_id": V_TGT + 3}, "eos_id must be an id inside the vocabularies"),
        ({"bos_id": -1}, "bos_id must be an integer >= 0"),
        ({"eos_id": 0}, "must differ"),
        ({"pad_id": True}, "pad_id must be an integer >= 0"),
    ],
)
def test_special_ids_outside_the_vocabularies_or_shared_are_refused_by_name(name, ids, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, src_vocab_size=V_SRC, tgt_vocab_size=V_TGT, **SMALL[name], **ids)


def test_the_default_special_ids_still_build_the_smallest_vocabulary():
    assert TransformerConfig(src_vocab_size=3, tgt_vocab_size=3, d_model=8, heads=2).pad_id == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 500.0, "max_length": 8}, "alpha=500.0 overflows the length penalty at max_length=8"),
        ({"alpha": 400.0, "length_penalty": "gnmt", "max_length": 60}, "overflows the length penalty"),
        ({"alpha": "1"}, "alpha='1' must be a finite number"),
        ({"min_length": True}, "min_length=True must be an integer"),
    ],
)
def test_the_reference_search_refuses_by_name_what_the_serving_search_refuses(kwargs, message):
    model = random_translator("transformer")
    settings = {"beam_size": 2, "max_length": 5} | kwargs
    with pytest.raises(ValueError):
        serving_search.BeamConfig(eos_id=EOS, bos_id=1, **settings)
    with pytest.raises(ValueError, match=message):
        decoding.beam_search(model, SRC[:1, :4], **settings)
    if "min_length" in kwargs:
        with pytest.raises(ValueError, match=message):
            decoding.greedy_decode(model, SRC[:1, :4], min_length=kwargs["min_length"])


def test_a_boolean_alpha_is_refused_by_the_reference_search():
    with pytest.raises(ValueError, match="alpha=True must be a finite number"):
        decoding.beam_search(random_translator("transformer"), SRC[:1, :4], alpha=True)


def test_teacher_forced_scoring_names_a_target_past_the_positions_or_of_the_wrong_dtype():
    torch.manual_seed(0)
    args = {"src_vocab_size": V_SRC, "tgt_vocab_size": V_TGT, "max_positions": 8}
    model = build_model("transformer", **args, **SMALL["transformer"]).eval()
    target = torch.full((1, 9), 5)
    target[0, -1] = EOS
    with pytest.raises(ValueError, match="tgt_ids of length 9 exceeds the model's max_positions=8"):
        decoding.teacher_forced_logprob(model, SRC[:1, :4], target)
    with pytest.raises(ValueError, match="LongTensor"):
        decoding.teacher_forced_logprob(model, SRC[:1, :4], target[:, 1:].float())
    assert decoding.teacher_forced_logprob(model, SRC[:1, :4], target[:, 1:]).isfinite().all()
