"""serving.decoding.stepper: the persistent batch; rows that join and leave compute exactly what they would alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from serving.decoding import beam_search as bs
from serving.decoding import offline
from serving.decoding import step_spec as sp
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


PARSED = sp.parse_step_spec(SPEC)
ROW_PLACE = {"name": "row_place", "role": "row_place"}
INDEXED_SPEC = {**SPEC, "decoder": {**SPEC["decoder"], "inputs": [*SPEC["decoder"]["inputs"], ROW_PLACE]}}
INDEXED = sp.parse_step_spec(INDEXED_SPEC)
ENCODER_INPUTS = ("memory", "memory_t", "src_mask")


class IndexedDecoder:
    """``fake_decoder`` over indexed rows: encoder inputs come as a store of sentences and each row's
    are read here at its place (``row_place``), so every row computes what it would alone. Records
    (rows, places of the store, row_place) per call, and says it takes indexed rows as an ONNX Runtime
    runner would."""

    first_axes = {"tokens": "batch", "row_place": "batch", **dict.fromkeys(ENCODER_INPUTS, "sentences")}

    def __init__(self, inner=fake_decoder) -> None:
        self.inner, self.calls = inner, []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, places, row_place = len(inputs["tokens"]), len(inputs["memory"]), inputs["row_place"]
        assert row_place.shape == (rows,) and ((row_place >= 0) & (row_place < places)).all()
        self.calls.append((rows, places, row_place.tolist()))
        expanded = {name: inputs[name][row_place] for name in ENCODER_INPUTS}
        return self.inner(inputs | expanded)


SOURCES = [[5, 9, 7, 11], [6], [3, 4, 10], [], [8, 8, 8, 8, 8, 8]]


def test_encoder_inputs_append_eos_and_right_pad():
    feeds = sp.encoder_inputs(PARSED, [[5, 9], [], [3]])
    np.testing.assert_array_equal(feeds["src_ids"], [[5, 9, EOS], [EOS, PAD, PAD], [3, EOS, PAD]])
    assert feeds["src_ids"].dtype == np.int64
    for bad in ([-1], [1.5], [True], [2**70], [[1]], ["a"], np.array([2**63], np.uint64)):
        with pytest.raises(ValueError, match="source sentence 1 must be a list of non-negative token ids"):
            sp.encoder_inputs(PARSED, [[5], bad])
    np.testing.assert_array_equal(
        sp.encoder_inputs(PARSED, [np.array([4, 6], np.int32)])["src_ids"], [[4, 6, EOS]]
    )


CONFIG = bs.BeamConfig(beam_size=3, n_best=3, max_length=8, length_penalty="average", eos_id=EOS, bos_id=BOS)


def test_translate_ids_batched_equals_each_sentence_translated_alone():
    together = offline.translate_ids(fake_encoder, fake_decoder, SPEC, SOURCES, CONFIG)
    alone = [offline.translate_ids(fake_encoder, fake_decoder, SPEC, [s], CONFIG)[0] for s in SOURCES]
    assert together == alone
    indexed = IndexedDecoder()
    assert offline.translate_ids(fake_encoder, indexed, INDEXED_SPEC, SOURCES, CONFIG) == alone
    rows = [r for r, _, _ in indexed.calls]
    assert rows[:2] == [5, 15]  # one row each, then 3 (beam) each, over one store of the 5 sentences
    assert indexed.calls[1][2] == [p for p in range(5) for _ in range(3)]
    assert all(len(h) == 3 and h[0].tokens[-1] == EOS for h in together)
    assert offline.translate_ids(fake_encoder, fake_decoder, SPEC, [], CONFIG) == []


def test_translate_in_batches_groups_sentences_by_source_length_and_keeps_their_order():
    batches = []

    def encoder(inputs):
        batches.append(sorted(int((row != PAD).sum()) - 1 for row in inputs["src_ids"]))  # without EOS
        return fake_encoder(inputs)

    got = offline.translate_in_batches(encoder, fake_decoder, SPEC, SOURCES, CONFIG, max_sentences=2)
    alone = [offline.translate_ids(fake_encoder, fake_decoder, SPEC, [s], CONFIG)[0] for s in SOURCES]
    assert got == alone  # in the order given, each as it decodes alone
    assert batches == [[0, 1], [3, 4], [6]]  # by source length, at most 2 a batch
    assert offline.translate_in_batches(fake_encoder, fake_decoder, SPEC, [], CONFIG, 2) == []


def decode_joining(sources, configs, decoder=fake_decoder, *, cancel=None, indexed=False):
    """Iteration-level batching: sentence i joins before step 2*i; all share every decoder call.

    ``cancel`` (sentence index, step): that sentence is removed before that step, as a client leaving.
    ``indexed``: rows over the encoder store (``decoder`` is wrapped in :class:`IndexedDecoder`).
    Returns each sentence's hypotheses and, per step, the live rows, the cache length and the rows run.
    """
    decoder = IndexedDecoder(decoder) if indexed else decoder
    batch = st.DecodeBatch(INDEXED if indexed else PARSED, indexed=indexed)
    finished: dict[int, list[bs.Hypothesis]] = {}
    trace, step = [], 0
    while len(finished) < len(sources):
        if step % 2 == 0 and step // 2 < len(sources):
            i = step // 2
            encoded = fake_encoder(sp.encoder_inputs(PARSED, [sources[i]]))
            batch.join([i], encoded, [configs[i]], [len(sources[i]) + 1])
        if cancel is not None and cancel[1] == step:
            batch.remove(np.array([k == cancel[0] for k in batch.keys]))
            finished[cancel[0]] = []
        trace.append((batch.live_rows, batch.column, batch.physical))
        for done in batch.step(decoder):
            finished[done.key] = done.hypotheses
        step += 1
    return [finished[i] for i in range(len(sources))], trace


def alone(sources, configs):
    return [
        offline.translate_ids(fake_encoder, fake_decoder, SPEC, [s], c)[0]
        for s, c in zip(sources, configs, strict=True)
    ]


@pytest.mark.parametrize("indexed", [False, True], ids=["per-row", "indexed"])
def test_sentences_joining_and_leaving_between_steps_equal_each_translated_alone(indexed):
    hyps, trace = decode_joining(SOURCES, [CONFIG] * len(SOURCES), indexed=indexed)
    assert hyps == alone(SOURCES, [CONFIG] * len(SOURCES))
    assert max(rows for rows, _, _ in trace) > CONFIG.beam_size  # several sentences really shared steps
    assert max(past for _, past, _ in trace) <= CONFIG.max_length  # no column outlives its sentences
    assert all(physical == rows for rows, _, physical in trace)  # never a padding row


@pytest.mark.parametrize("indexed", [False, True], ids=["per-row", "indexed"])
def test_sentences_of_mixed_beam_sizes_in_one_batch_equal_each_translated_alone(indexed):
    configs = [dataclasses.replace(CONFIG, beam_size=b, n_best=1) for b in (1, 4, 2, 3, 1)]
    hyps, _ = decode_joining(SOURCES, configs, indexed=indexed)
    assert hyps == alone(SOURCES, configs)


@pytest.mark.parametrize("indexed", [False, True], ids=["per-row", "indexed"])
def test_a_sentence_removed_mid_search_leaves_the_others_unchanged(indexed):
    hyps, _ = decode_joining(SOURCES, [CONFIG] * len(SOURCES), cancel=(1, 4), indexed=indexed)
    expected = alone(SOURCES, [CONFIG] * len(SOURCES))
    assert hyps[1] == [] and hyps[:1] + hyps[2:] == expected[:1] + expected[2:]


@pytest.mark.parametrize("indexed", [False, True], ids=["per-row", "indexed"])
def test_without_the_masks_late_joiners_would_differ_so_the_tests_above_can_fail(indexed):
    def unmasked(inputs):
        ones = {name: np.ones_like(inputs[name]) for name in ("cache_mask", "src_mask")}
        return fake_decoder(inputs | ones)

    hyps, _ = decode_joining(SOURCES, [CONFIG] * len(SOURCES), decoder=unmasked, indexed=indexed)
    assert hyps != alone(SOURCES, [CONFIG] * len(SOURCES))


def test_cache_columns_only_a_departed_sentence_used_are_dropped_when_it_leaves():
    batch = st.DecodeBatch(PARSED)
    short = dataclasses.replace(CONFIG, beam_size=1, n_best=1, max_length=3)
    batch.join(["early"], fake_encoder(sp.encoder_inputs(PARSED, [[5]])), [short], [2])
    batch.step(fake_decoder)  # column 0
    stays = dataclasses.replace(CONFIG, min_length=7)  # still running long after "early" left
    batch.join(["late"], fake_encoder(sp.encoder_inputs(PARSED, [[6, 7]])), [stays], [3])
    assert batch.joined.tolist() == [0, 1] and batch.column == 1
    late_steps = 0
    while "early" in batch.keys:
        batch.step(fake_decoder)
        late_steps += 1
    # the step in which "early" finished dropped column 0, which only it used
    assert batch.keys == ["late"] and batch.joined.tolist() == [0] and batch.column == late_steps
    assert batch.rows["keys"].shape[1] == batch.column and batch.rows["past"].shape[2] == batch.column


STATE_ONLY = {  # a recurrent decoder fed its state alone: no encoder input (each role is optional)
    **{k: SPEC[k] for k in ("pad_id", "bos_id", "eos_id", "vocab_size")},
    "encoder": {"inputs": ["src_ids"], "outputs": ["h0"]},
    "decoder": {
        "inputs": [
            {"name": "tokens", "role": "tokens"},
            {"name": "h", "role": "state", "output": "h_out", "init": "h0"},
        ],
        "outputs": ["log_probs", "h_out"],
    },
}


def test_a_decoder_without_encoder_inputs_decodes_each_sentence_as_alone():
    def encoder(inputs):
        return {"h0": fake_encoder(inputs)["h0"]}  # [B, D]

    def decoder(inputs):
        h = np.tanh(inputs["h"] + TGT_EMB[inputs["tokens"]]).astype(np.float32)  # [rows, D]
        logits = h @ W_OUT  # [rows, V]
        log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return {"log_probs": log_probs.astype(np.float32), "h_out": h}

    together = offline.translate_ids(encoder, decoder, STATE_ONLY, SOURCES, CONFIG)
    assert together == [offline.translate_ids(encoder, decoder, STATE_ONLY, [s], CONFIG)[0] for s in SOURCES]
    assert all(together)


def test_a_decoder_that_omits_an_output_is_refused_with_its_name():
    batch = st.DecodeBatch(PARSED)
    batch.join([0], fake_encoder(sp.encoder_inputs(PARSED, [[5]])), [CONFIG], [2])
    with pytest.raises(ValueError, match="new_past"):
        batch.step(lambda inputs: {k: v for k, v in fake_decoder(inputs).items() if k != "new_past"})


def _one_row_short(value: np.ndarray) -> np.ndarray:
    return value[:-1]


def _one_wider(value: np.ndarray) -> np.ndarray:
    return np.concatenate([value, value[..., -1:]], axis=-1)


@pytest.mark.parametrize(
    ("output", "change"),
    [
        ("new_keys", _one_row_short),
        ("new_past", _one_row_short),
        ("h_out", _one_row_short),  # a state's gather clipped to its last row
        ("new_keys", _one_wider),  # the compiled copy read past the entries by the cache's sizes
        ("new_past", _one_wider),
    ],
)
def test_a_decoder_output_of_another_shape_than_its_rows_is_refused_with_its_name(output, change):
    batch = st.DecodeBatch(PARSED)
    batch.join([0, 1], fake_encoder(sp.encoder_inputs(PARSED, [[5, 6], [7]])), [CONFIG] * 2, [3, 2])
    batch.step(fake_decoder)  # both widen to their beam: 6 rows

    def misshapen(inputs):
        outputs = fake_decoder(inputs)
        return outputs | {output: change(outputs[output])}

    with pytest.raises(ValueError, match=f"the decoder's '{output}'"):
        batch.step(misshapen)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["decoder"]["inputs"].append({"name": "x", "role": "memory"}), "unknown role"),
        (lambda s: s["decoder"]["inputs"][2].pop("output"), "lacks"),
        (lambda s: s["decoder"]["inputs"].pop(4), "cache_mask"),
        (lambda s: s["decoder"]["outputs"].remove("log_probs"), "log_probs"),
        (lambda s: s["decoder"]["inputs"][5].update(init="nope"), "init"),
        (lambda s: s.pop("eos_id"), "eos_id"),
        # the search reads each row's eos_id column: one past the vocabulary read past the row
        (lambda s: s.update(eos_id=s["vocab_size"]), f"eos_id {V} not below vocab_size {V}"),
        (lambda s: s.update(bos_id=-1), "bos_id -1 is negative"),
        # cache and pad axes index dimensions (the compiled step's tensor fields too): never the rows
        (lambda s: s["decoder"]["inputs"][2].update(axis=-2), "'keys': cache axis -2"),
        (lambda s: s["decoder"]["inputs"][2].update(axis=0), "'keys': cache axis 0"),
        (lambda s: s["decoder"]["inputs"][2].update(axis=3), "'keys': cache axis 3"),
        (lambda s: s["decoder"]["inputs"][2].update(axis=1.0), "'keys': cache axis 1.0"),
        (lambda s: s["decoder"]["inputs"][6].update(pad_axis=-2), "'memory': pad_axis -2"),
        (lambda s: s["decoder"]["inputs"][6].update(pad_axis=0), "'memory': pad_axis 0"),
    ],
)
def test_malformed_step_specs_are_refused_with_the_reason(change, message):
    spec = {**SPEC, "decoder": {k: list(v) for k, v in SPEC["decoder"].items()}}
    spec["decoder"]["inputs"] = [dict(d) for d in spec["decoder"]["inputs"]]
    change(spec)
    with pytest.raises(ValueError, match=message):
        sp.parse_step_spec(spec)


def test_a_beam_config_that_disagrees_with_the_model_is_refused():
    with pytest.raises(ValueError, match="eos/bos"):
        offline.translate_ids(fake_encoder, fake_decoder, SPEC, [[3]], dataclasses.replace(CONFIG, eos_id=3))
    with pytest.raises(ValueError, match="max_positions"):
        offline.translate_ids(
            fake_encoder, fake_decoder, SPEC, [[3]], dataclasses.replace(CONFIG, max_length=17)
        )


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
    assert run.first_axes == {"x": None}  # an unnamed dynamic axis: no indexed rows for this graph
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
    ours = offline.translate_ids(run_encoder, run_decoder, model.step_spec(), REAL_SOURCES, config)
    src = torch.from_numpy(sp.encoder_inputs(sp.parse_step_spec(model.step_spec()), REAL_SOURCES)["src_ids"])
    reference = decoding.beam_search(model, src, beam_size=3, n_best=2, max_length=7)
    assert [[(h.tokens, h.score) for h in s] for s in ours] == [
        [(h.tokens, h.score) for h in s] for s in reference
    ]
    if sp.parse_step_spec(model.step_spec()).indexed:  # the transformer: rows over a store
        indexed = offline.translate_ids(
            run_encoder, run_decoder, model.step_spec(), REAL_SOURCES, config, True
        )
        # tokens identical; scores to float32 rounding
        assert [[h.tokens for h in s] for s in indexed] == [[h.tokens for h in s] for s in reference]
        np.testing.assert_allclose(
            [h.score for s in indexed for h in s], [h.score for s in reference for h in s], rtol=1e-5
        )


@needs_translators
@pytest.mark.parametrize("name", TRANSLATORS or ["transformer"])
def test_a_torch_translators_sentences_joining_at_different_steps_equal_the_torch_reference(name):

    from tests.test_decoding import tiny_translator

    model = tiny_translator(name)
    spec = sp.parse_step_spec(model.step_spec())
    config = bs.BeamConfig(beam_size=3, n_best=2, max_length=7, eos_id=EOS, bos_id=BOS)
    run_encoder, run_decoder = torch_runners(model)
    for indexed in sorted({False, spec.indexed}):  # both layouts where the model takes both
        batch, results = st.DecodeBatch(spec, indexed), {}
        for step in range(40):
            if step < len(REAL_SOURCES):  # one more sentence joins before each of the first steps
                src = REAL_SOURCES[step]
                batch.join([step], run_encoder(sp.encoder_inputs(spec, [src])), [config], [len(src) + 1])
            results |= {done.key: done.hypotheses for done in batch.step(run_decoder)}
        _assert_reference(model, spec, config, results)


def _assert_reference(model, spec, config, results):
    import torch

    from training import decoding

    for i, src in enumerate(REAL_SOURCES):
        ids = torch.from_numpy(sp.encoder_inputs(spec, [src])["src_ids"])
        reference = decoding.beam_search(model, ids, beam_size=3, n_best=2, max_length=7)[0]
        # tokens identical; scores to float32 rounding (masked columns change the reductions' order)
        assert [h.tokens for h in results[i]] == [h.tokens for h in reference]
        np.testing.assert_allclose([h.score for h in results[i]], [h.score for h in reference], rtol=1e-5)


def test_a_leaving_sentences_rows_are_refilled_from_the_tail_and_the_others_stay_put():
    two = dataclasses.replace(CONFIG, beam_size=2, n_best=1, min_length=6)
    batch = st.DecodeBatch(PARSED)
    sources = SOURCES[:3]
    batch.join(
        range(3), fake_encoder(sp.encoder_inputs(PARSED, sources)), [two] * 3, [len(s) + 1 for s in sources]
    )
    batch.step(fake_decoder)  # every sentence widens from 1 row to 2: back to the search order
    assert batch.slot.tolist() == [0, 1, 2, 3, 4, 5]
    batch.remove(np.array([True, False, False]))
    assert batch.slot.tolist() == [2, 3, 0, 1]  # sentence 2 moved into the freed rows; sentence 1 stayed
    finished = {}
    while batch.size:
        finished |= {done.key: done.hypotheses for done in batch.step(fake_decoder)}
    assert [finished[1], finished[2]] == alone(sources[1:], [two, two])


def test_indexed_rows_stay_in_search_order_and_a_joiner_takes_a_cancelled_sentences_place():
    two = dataclasses.replace(CONFIG, beam_size=2, n_best=1, min_length=6)
    batch, decoder = st.DecodeBatch(INDEXED, indexed=True), IndexedDecoder()
    sources = SOURCES[:3]
    batch.join(
        range(3), fake_encoder(sp.encoder_inputs(INDEXED, sources)), [two] * 3, [len(s) + 1 for s in sources]
    )
    batch.step(decoder)  # every sentence widens from 1 row to 2
    assert (batch.physical, batch.slot.tolist()) == (6, [0, 1, 2, 3, 4, 5])
    batch.remove(np.array([True, False, False]))
    assert batch.slot.tolist() == [0, 1, 2, 3] and batch.owner.tolist() == [1, 2]  # rows gathered, in order
    batch.join([3], fake_encoder(sp.encoder_inputs(INDEXED, [[7, 7]])), [two], [3])
    assert batch.owner.tolist() == [1, 2, 0]  # the joiner is stored in the cancelled sentence's place
    finished = {}
    while batch.size:
        finished |= {done.key: done.hypotheses for done in batch.step(decoder)}
    assert [finished[k] for k in (1, 2, 3)] == alone([*sources[1:], [7, 7]], [two] * 3)
    # each row read its own sentence's place: sentences 1 and 2 (2 rows each), then the joiner's one
    assert decoder.calls[1][2] == [1, 1, 2, 2, 0]


def test_indexed_rows_only_where_the_spec_has_row_place_and_the_graph_takes_a_store():
    indexed = IndexedDecoder()
    assert sp.takes_indexed_rows(INDEXED, indexed)
    assert not sp.takes_indexed_rows(PARSED, indexed)  # the spec has no row_place input
    assert not sp.takes_indexed_rows(INDEXED, fake_decoder)  # the runner says nothing (Triton)
    one_axis = type(
        "OneAxis", (IndexedDecoder,), {"first_axes": dict.fromkeys(IndexedDecoder.first_axes, "b")}
    )
    assert not sp.takes_indexed_rows(INDEXED, one_axis())  # every input shares the rows' batch axis
    with pytest.raises(ValueError, match="row_place"):
        st.DecodeBatch(PARSED, indexed=True)
    with pytest.raises(ValueError, match="at most one input with role 'row_place'"):
        twice = [*INDEXED_SPEC["decoder"]["inputs"], {"name": "again", "role": "row_place"}]
        sp.parse_step_spec({**INDEXED_SPEC, "decoder": {**INDEXED_SPEC["decoder"], "inputs": twice}})


def test_per_row_feeds_of_a_row_place_decoder_give_each_row_its_own_place():
    """Where the runner takes no store (Triton), a decoder with ``row_place`` gets its encoder inputs
    per row and ``row_place`` 0..R-1, and decodes as it would alone."""
    places = []

    def recording(inputs):
        places.append(inputs["row_place"].tolist())
        assert len(inputs["memory"]) == len(inputs["tokens"])
        return fake_decoder(inputs)

    got = offline.translate_ids(fake_encoder, recording, INDEXED_SPEC, SOURCES, CONFIG)
    assert got == alone(SOURCES, [CONFIG] * len(SOURCES))
    assert places[1] == list(range(15))


def test_an_emptied_batch_forgets_its_source_width_so_a_later_short_sentence_is_not_padded():
    widths = []

    def recording(inputs):
        widths.append(inputs["memory"].shape[1])
        return fake_decoder(inputs)

    batch = st.DecodeBatch(PARSED)
    for source in ([8] * 12, [5]):  # a long sentence alone, then a short one alone
        batch.join([0], fake_encoder(sp.encoder_inputs(PARSED, [source])), [CONFIG], [len(source) + 1])
        while batch.size:
            batch.step(recording)
    assert widths[0] == 13 and widths[-1] == 2


@pytest.mark.parametrize("indexed", [False, True], ids=["per-row", "indexed"])
def test_a_join_the_step_before_made_room_for_copies_no_cache(indexed):
    """step(joining=n) writes its buffers with rows for n joiners: the join then fills them in place
    (the caches stay the same arrays), and every sentence still decodes as it would alone."""
    decoder = IndexedDecoder() if indexed else fake_decoder
    batch = st.DecodeBatch(INDEXED if indexed else PARSED, indexed=indexed)
    sources, configs = SOURCES[:3], [CONFIG] * 3

    def join(keys):
        chosen = [sources[k] for k in keys]
        encoded = fake_encoder(sp.encoder_inputs(PARSED, chosen))
        batch.join(keys, encoded, [configs[k] for k in keys], [len(s) + 1 for s in chosen])

    join([0])
    finished = {done.key: done.hypotheses for done in batch.step(decoder)}
    finished |= {done.key: done.hypotheses for done in batch.step(decoder, joining=2)}
    before = {name: id(value) for name, value in batch.rows.items()}
    join([1, 2])
    assert {name: id(value) for name, value in batch.rows.items()} == before  # filled in place
    while batch.size:
        finished |= {done.key: done.hypotheses for done in batch.step(decoder)}
    assert [finished[k] for k in range(3)] == alone(sources, configs)
    # without the room, the same join copies every cache into new arrays
    batch = st.DecodeBatch(INDEXED if indexed else PARSED, indexed=indexed)
    join([0])
    batch.step(decoder)
    batch.step(decoder)
    before = {name: id(value) for name, value in batch.rows.items()}
    join([1, 2])
    assert all(id(value) != before[name] for name, value in batch.rows.items())
