"""serving.decoding.stepper: spec-driven decoder state; merged rows compute exactly what they would alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from serving.decoding import beam_search as bs
from serving.decoding import stepper as st
from serving.execution.onnxruntime import onnxruntime_runner

PAD, BOS, EOS = 0, 1, 2
D, V, SRC_V = 4, 9, 12
_RNG = np.random.default_rng(0)
SRC_EMB = _RNG.normal(size=(SRC_V, D)).astype(np.float32)
TGT_EMB = _RNG.normal(size=(V, D)).astype(np.float32)
POS = _RNG.normal(size=(16, D)).astype(np.float32)
W_OUT = _RNG.normal(size=(D, V)).astype(np.float32) * 3

SPEC = {
    "pad_id": PAD,
    "bos_id": BOS,
    "eos_id": EOS,
    "vocab_size": V,
    "max_positions": 16,
    "encoder": {"inputs": ["src_ids"], "outputs": ["memory", "memory_t", "src_mask", "h0"]},
    "decoder": {
        "inputs": [
            {"name": "tokens", "role": "tokens"},
            {"name": "positions", "role": "positions"},
            {"name": "keys", "role": "cache", "output": "new_keys", "axis": 1, "init_shape": [-1, 0, D]},
            {"name": "past", "role": "cache", "output": "new_past", "axis": 2, "init_shape": [-1, 2, 0]},
            {"name": "cache_mask", "role": "cache_mask"},
            {"name": "h", "role": "state", "output": "h_out", "init": "h0"},
            {"name": "memory", "role": "encoder", "pad_axis": 1},
            {"name": "memory_t", "role": "encoder", "pad_axis": 2},
            {"name": "src_mask", "role": "encoder", "pad_axis": 1},
        ],
        "outputs": ["log_probs", "new_keys", "new_past", "h_out"],
    },
    "dtypes": {"src_ids": "int64", "tokens": "int64", "src_mask": "bool", "cache_mask": "bool"},
}


def masked_max(x: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """Max over valid entries only: exact whatever the padding or the batch (max is order-free)."""
    return np.max(np.where(mask, x, -np.inf), axis=axis, initial=-np.inf)


def fake_encoder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A deterministic 'encoder': embeddings, their transpose, the mask and a max-pooled start state."""
    src = inputs["src_ids"]  # [B, S]
    mask = src != PAD  # [B, S]
    memory = SRC_EMB[src] * mask[:, :, None]  # [B, S, D]
    h0 = masked_max(memory, mask[:, :, None], axis=1)  # [B, D]
    return {"memory": memory, "memory_t": memory.transpose(0, 2, 1).copy(), "src_mask": mask, "h0": h0}


def fake_decoder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An attention-like step whose every reduction is a masked max, so padding must be masked out."""
    e = TGT_EMB[inputs["tokens"]] + POS[inputs["positions"]]  # [rows, D]
    mask = inputs["cache_mask"]  # [rows, P]
    self_ctx = np.maximum(masked_max(inputs["keys"], mask[:, :, None], axis=1), e)  # [rows, D]
    past = np.maximum(masked_max(inputs["past"], mask[:, None, :], axis=2), -5.0)  # [rows, 2]
    src_mask = inputs["src_mask"]  # [rows, S]
    cross = masked_max(inputs["memory"] * e[:, None, :], src_mask[:, :, None], axis=1)  # [rows, D]
    cross_t = masked_max(inputs["memory_t"], src_mask[:, None, :], axis=2)  # [rows, D]
    h = np.tanh(inputs["h"] + self_ctx - cross + 0.5 * cross_t + past[:, :1] - past[:, 1:]).astype(np.float32)
    logits = np.max(h[:, :, None] * W_OUT[None], axis=1)  # [rows, V]
    log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
    log_probs -= logits.max(1, keepdims=True)
    new_past = np.stack([h.min(1), e.max(1)], axis=1)[:, :, None]  # [rows, 2, 1]
    return {
        "log_probs": log_probs.astype(np.float32),
        "new_keys": (e + h)[:, None, :],
        "new_past": new_past,
        "h_out": h,
    }


PARSED = st.parse_step_spec(SPEC)
SOURCES = [[5, 9, 7, 11], [6], [3, 4, 10], [], [8, 8, 8, 8, 8, 8]]


def encode(sentences) -> st.RowState:
    encoded = fake_encoder(st.encoder_inputs(PARSED, sentences))
    return st.initial_rows(PARSED, encoded, len(sentences))


def run_alone(rows: st.RowState, feeds) -> st.RowState:
    """Feed ``(origin, tokens)`` pairs to one sentence's rows, step by step."""
    for origin, tokens in feeds:
        _, rows = st.run_step(PARSED, fake_decoder, st.gather_rows(rows, np.array(origin)), np.array(tokens))
    return rows


def assert_same_state(a: st.RowState, b: st.RowState) -> None:
    assert a.tensors.keys() == b.tensors.keys()
    for name in a.tensors:
        np.testing.assert_array_equal(a.tensors[name], b.tensors[name], err_msg=name)
    np.testing.assert_array_equal(a.positions, b.positions)


def test_encoder_inputs_append_eos_and_right_pad():
    feeds = st.encoder_inputs(PARSED, [[5, 9], [], [3]])
    np.testing.assert_array_equal(feeds["src_ids"], [[5, 9, EOS], [EOS, PAD, PAD], [3, EOS, PAD]])
    assert feeds["src_ids"].dtype == np.int64
    with pytest.raises(ValueError, match="source sentence 1"):
        st.encoder_inputs(PARSED, [[5], [-1]])


def test_gather_rows_reorders_duplicates_and_drops_rows_by_origin():
    rows = run_alone(encode([SOURCES[0]]), [([0], [BOS]), ([0, 0, 0], [3, 4, 5])])
    gathered = st.gather_rows(rows, np.array([2, 2, 0]))
    for name, value in rows.tensors.items():
        np.testing.assert_array_equal(gathered.tensors[name], value[[2, 2, 0]], err_msg=name)
    assert not np.array_equal(rows.tensors["h"][2], rows.tensors["h"][0])  # the rows really differ


def test_merged_rows_of_different_source_and_cache_lengths_match_each_sentence_alone():
    long_rows = run_alone(encode([SOURCES[0]]), [([0], [BOS]), ([0, 0], [3, 4]), ([1, 0], [5, 6])])
    short_rows = run_alone(encode([SOURCES[1]]), [([0], [BOS])])
    assert long_rows.tensors["cache_mask"].shape == (2, 3) and short_rows.tensors["cache_mask"].shape == (
        1,
        1,
    )
    tokens_long, tokens_short = np.array([7, 8]), np.array([4])
    lp_long, after_long = st.run_step(PARSED, fake_decoder, long_rows, tokens_long)
    lp_short, after_short = st.run_step(PARSED, fake_decoder, short_rows, tokens_short)

    merged = st.merge_rows(PARSED, [long_rows, short_rows])
    assert merged.tensors["cache_mask"].tolist()[2] == [False, False, True]  # left-padded
    assert merged.tensors["memory_t"].shape == (3, D, 5)  # right-padded on pad_axis 2
    lp, after = st.run_step(PARSED, fake_decoder, merged, np.concatenate([tokens_long, tokens_short]))
    np.testing.assert_array_equal(lp[:2], lp_long)
    np.testing.assert_array_equal(lp[2:], lp_short)
    back_long, back_short = st.split_rows(PARSED, after, [2, 1])
    assert_same_state(back_long, after_long)
    assert back_short.tensors["cache_mask"].shape == (1, 2)  # padding columns trimmed on the way out
    np.testing.assert_array_equal(back_short.tensors["memory"][:, :2], after_short.tensors["memory"])


def test_merged_rows_without_the_mask_would_differ_so_the_test_above_can_fail():
    long_rows = run_alone(encode([SOURCES[0]]), [([0], [BOS]), ([0], [3])])
    short_rows = encode([SOURCES[1]])
    merged = st.merge_rows(PARSED, [long_rows, short_rows])
    merged.tensors["cache_mask"][:] = True
    merged.tensors["src_mask"][:] = True
    lp, _ = st.run_step(PARSED, fake_decoder, merged, np.array([4, BOS]))
    lp_short, _ = st.run_step(PARSED, fake_decoder, short_rows, np.array([BOS]))
    assert not np.array_equal(lp[1:], lp_short)


CONFIG = bs.BeamConfig(beam_size=3, n_best=3, max_length=8, length_penalty="average", eos_id=EOS, bos_id=BOS)


def test_translate_ids_batched_equals_each_sentence_translated_alone():
    together = st.translate_ids(fake_encoder, fake_decoder, SPEC, SOURCES, CONFIG)
    alone = [st.translate_ids(fake_encoder, fake_decoder, SPEC, [s], CONFIG)[0] for s in SOURCES]
    assert together == alone
    assert all(len(h) == 3 and h[0].tokens[-1] == EOS for h in together)
    assert st.translate_ids(fake_encoder, fake_decoder, SPEC, [], CONFIG) == []


def test_sentences_joining_and_leaving_the_scheduler_equal_translate_ids():
    """Iteration-level batching: sentence i joins at step 2*i, all share every decoder call."""
    in_flight: list[st.Sentence] = []
    finished: dict[int, list[bs.Hypothesis]] = {}
    ids: list[int] = []
    step = 0
    while len(finished) < len(SOURCES):
        if step % 2 == 0 and step // 2 < len(SOURCES):
            encoded = fake_encoder(st.encoder_inputs(PARSED, [SOURCES[step // 2]]))
            in_flight += st.start_sentences(PARSED, encoded, CONFIG)
            ids.append(step // 2)
        in_flight = st.step_sentences(PARSED, fake_decoder, in_flight)
        for i, s in zip(ids, in_flight, strict=True):
            if s.done:
                finished[i] = bs.finalize(s.beam)
        ids = [i for i, s in zip(ids, in_flight, strict=True) if not s.done]
        in_flight = [s for s in in_flight if not s.done]
        step += 1
    expected = st.translate_ids(fake_encoder, fake_decoder, SPEC, SOURCES, CONFIG)
    assert [finished[i] for i in range(len(SOURCES))] == expected


def test_merge_refuses_rows_whose_state_shapes_disagree():
    a, b = encode([SOURCES[0]]), encode([SOURCES[1]])
    b = dataclasses.replace(b, tensors=b.tensors | {"h": np.zeros((1, D + 1), np.float32)})
    with pytest.raises(ValueError, match="'h'"):
        st.merge_rows(PARSED, [a, b])
    with pytest.raises(ValueError, match="sizes"):
        st.split_rows(PARSED, a, [2])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["decoder"]["inputs"].append({"name": "x", "role": "memory"}), "unknown role"),
        (lambda s: s["decoder"]["inputs"][2].pop("output"), "lacks"),
        (lambda s: s["decoder"]["inputs"].pop(4), "cache_mask"),
        (lambda s: s["decoder"]["outputs"].remove("log_probs"), "log_probs"),
        (lambda s: s["decoder"]["inputs"][5].update(init="nope"), "init"),
        (lambda s: s.pop("eos_id"), "eos_id"),
    ],
)
def test_malformed_step_specs_are_refused_with_the_reason(change, message):
    spec = {**SPEC, "decoder": {k: list(v) for k, v in SPEC["decoder"].items()}}
    spec["decoder"]["inputs"] = [dict(d) for d in spec["decoder"]["inputs"]]
    change(spec)
    with pytest.raises(ValueError, match=message):
        st.parse_step_spec(spec)


def test_a_beam_config_that_disagrees_with_the_model_is_refused():
    with pytest.raises(ValueError, match="eos/bos"):
        st.translate_ids(fake_encoder, fake_decoder, SPEC, [[3]], dataclasses.replace(CONFIG, eos_id=3))
    with pytest.raises(ValueError, match="max_positions"):
        st.translate_ids(fake_encoder, fake_decoder, SPEC, [[3]], dataclasses.replace(CONFIG, max_length=17))


def test_onnxruntime_runner_feeds_only_the_declared_inputs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "neg", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "neg.onnx")
    run = onnxruntime_runner(tmp_path / "neg.onnx")
    out = run({"x": np.ones((3, 2), np.float32), "unused": np.zeros(1)})
    np.testing.assert_array_equal(out["y"], -np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"\['x'\]"):
        run({"z": np.ones((1, 2), np.float32)})


# --- real translators from the registry, driven through numpy ------------------------------------------


def registered_translators() -> list[str]:
    """Translator names from the registry ([] where torch is absent: serving must not need it)."""
    try:
        from training.models import list_models
    except ImportError:
        return []
    return list_models("translate")


TRANSLATORS = registered_translators()
needs_translators = pytest.mark.skipif(
    "transformer" not in TRANSLATORS, reason="the transformer translator is not registered (or no torch)"
)


def torch_runners(model):
    """Numpy runners over a torch translator's encode / decode_step (what the ONNX graphs compute)."""
    import torch

    def call(fn, inputs):
        with torch.inference_mode():
            outputs = fn({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    return (lambda inputs: call(lambda d: model.encode(d["src_ids"]), inputs)), (
        lambda inputs: call(model.decode_step, inputs)
    )


REAL_SOURCES = [[5, 9, 7, 11], [6, 4], [13]]


@needs_translators
@pytest.mark.parametrize("name", TRANSLATORS or ["transformer"])
def test_translate_ids_over_a_torch_translator_equals_the_torch_reference(name):
    import torch

    from tests.test_decoding import tiny_translator
    from training import decoding

    model = tiny_translator(name)
    config = bs.BeamConfig(beam_size=3, n_best=2, max_length=7, eos_id=EOS, bos_id=BOS)
    run_encoder, run_decoder = torch_runners(model)
    ours = st.translate_ids(run_encoder, run_decoder, model.step_spec(), REAL_SOURCES, config)
    src = torch.from_numpy(st.encoder_inputs(st.parse_step_spec(model.step_spec()), REAL_SOURCES)["src_ids"])
    reference = decoding.beam_search(model, src, beam_size=3, n_best=2, max_length=7)
    assert [[(h.tokens, h.score) for h in s] for s in ours] == [
        [(h.tokens, h.score) for h in s] for s in reference
    ]


@needs_translators
@pytest.mark.parametrize("name", TRANSLATORS or ["transformer"])
def test_merging_a_torch_translators_rows_keeps_each_rows_log_probs(name):
    from tests.test_decoding import tiny_translator

    model = tiny_translator(name)
    spec = st.parse_step_spec(model.step_spec())
    run_encoder, run_decoder = torch_runners(model)
    rows = [st.initial_rows(spec, run_encoder(st.encoder_inputs(spec, [s])), 1) for s in REAL_SOURCES]
    for _ in range(2):  # the first sentence is two steps ahead
        _, rows[0] = st.run_step(spec, run_decoder, rows[0], np.array([4]))
    alone = [st.run_step(spec, run_decoder, r, np.array([5]))[0] for r in rows]
    merged, _ = st.run_step(spec, run_decoder, st.merge_rows(spec, rows), np.array([5, 5, 5]))
    np.testing.assert_allclose(merged, np.concatenate(alone), atol=1e-5)
