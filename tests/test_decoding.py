"""training.decoding: the PyTorch reference agrees with serving.decoding.beam_search token for token."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from serving.decoding import beam_search as bs
from tests.test_beam_search import (
    BOS,
    EOS,
    JUNK_EOS_EXPECTED,
    PAD,
    SCRIPT_BEAM2,
    SCRIPT_BEAM3,
    SCRIPT_JUNK_EOS,
    SCRIPT_TIE,
    SCRIPT_TIE_FULL,
    TIE_FULL_EXPECTED,
    VOCAB,
    ScriptedDecoder,
    log_probs_for,
    random_script,
    summary,
)
from training import decoding
from training.models import build_model, get_entry, list_models

SCRIPTS = [SCRIPT_BEAM2, SCRIPT_BEAM3, SCRIPT_TIE] + [random_script(s) for s in range(4)]
SCRIPTS += [SCRIPT_JUNK_EOS, SCRIPT_TIE_FULL]  # indices 7 and 8


class ScriptedTranslator(nn.Module):
    """The scripted fake decoder as a translator module: source row ``[i, EOS]`` decodes SCRIPTS[i].

    Its prefix lives in a ``cache`` role (int64 history of fed tokens), so decode_step exercises the
    spec-driven state: gathering by origin, appending, positions and the cache mask.
    """

    def encode(self, src_ids):
        return {"sentence": src_ids[:, 0]}  # (B,)

    def step_spec(self):
        history = {"name": "history", "role": "cache", "output": "new_history", "axis": 1}
        return {
            "pad_id": PAD,
            "bos_id": BOS,
            "eos_id": EOS,
            "vocab_size": VOCAB,
            "encoder": {"inputs": ["src_ids"], "outputs": ["sentence"]},
            "decoder": {
                "inputs": [
                    {"name": "tokens", "role": "tokens"},
                    {"name": "positions", "role": "positions"},
                    history | {"init_shape": [-1, 0]},
                    {"name": "cache_mask", "role": "cache_mask"},
                    {"name": "sentence", "role": "encoder"},
                ],
                "outputs": ["log_probs", "new_history"],
            },
            "dtypes": {"history": "int64", "new_history": "int64", "sentence": "int64"},
        }

    def decode_step(self, inputs):
        history, tokens = inputs["history"], inputs["tokens"]  # (B, P), (B,)
        assert bool((inputs["positions"] == history.shape[1]).all())
        assert inputs["cache_mask"].shape == history.shape and bool(inputs["cache_mask"].all())
        rows = [
            self._lookup(s, h + [t]) for s, h, t in zip(*self._lists(inputs), tokens.tolist(), strict=True)
        ]
        return {"log_probs": torch.stack(rows), "new_history": tokens[:, None]}

    def forward(self, src_ids, tgt_in):
        b, t = tgt_in.shape
        steps = [
            [self._lookup(int(src_ids[i, 0]), tgt_in[i, : j + 1].tolist()) for j in range(t)]
            for i in range(b)
        ]
        return torch.stack([torch.stack(row) for row in steps])  # (B, T, V) log-probs serve as logits

    @staticmethod
    def _lists(inputs):
        return inputs["sentence"].tolist(), inputs["history"].tolist()

    @staticmethod
    def _lookup(sentence: int, fed: list[int]) -> torch.Tensor:
        return torch.from_numpy(log_probs_for(SCRIPTS[sentence], tuple(fed[1:])))  # drop BOS


def scripted_src(indices) -> torch.Tensor:
    return torch.tensor([[i, EOS] for i in indices])


def numpy_reference(indices, **kwargs) -> list[list[bs.Hypothesis]]:
    decoder = ScriptedDecoder([SCRIPTS[i] for i in indices])
    return bs.beam_search(decoder.step, len(indices), bs.BeamConfig(**kwargs))


def as_tuples(hyps) -> list[list[tuple]]:
    return [[(h.tokens, h.score, h.normalized_score) for h in sentence] for sentence in hyps]


SETTINGS = [
    {"beam_size": 2, "n_best": 2, "max_length": 10, "length_penalty": "none"},
    {"beam_size": 3, "n_best": 3, "max_length": 10, "length_penalty": "average"},
    {"beam_size": 2, "n_best": 2, "max_length": 10, "min_length": 2, "length_penalty": "gnmt", "alpha": 2.0},
    {"beam_size": 2, "n_best": 2, "max_length": 2, "length_penalty": "none"},
    {"beam_size": 3, "n_best": 2, "max_length": 1, "length_penalty": "none"},
    {"beam_size": 4, "n_best": 4, "max_length": 5, "length_penalty": "average", "alpha": 0.6},
    {"beam_size": 1, "n_best": 1, "max_length": 6, "length_penalty": "none"},
]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "full_recompute"])
@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_torch_beam_search_equals_numpy_beam_search_on_the_scripted_decoder(kwargs, use_cache):
    indices = list(range(len(SCRIPTS)))
    model = ScriptedTranslator()
    torch_hyps = decoding.beam_search(model, scripted_src(indices), use_cache=use_cache, **kwargs)
    numpy_hyps = numpy_reference(indices, **kwargs)
    if use_cache:  # same float32 log-probs in, so bit-identical scores out
        assert as_tuples(torch_hyps) == as_tuples(numpy_hyps)
    else:  # forward's outputs go through log_softmax once more: same tokens, scores to rounding
        assert [[h.tokens for h in s] for s in torch_hyps] == [[h.tokens for h in s] for s in numpy_hyps]
        got = [h.score for s in torch_hyps for h in s]
        assert got == pytest.approx([h.score for s in numpy_hyps for h in s], abs=1e-5)


def test_torch_beam_search_finds_the_hand_computed_hypotheses():
    hyps = decoding.beam_search(
        ScriptedTranslator(), scripted_src([0, 1]), beam_size=3, n_best=3, length_penalty="none"
    )
    assert [h.tokens for h in hyps[1]] == [[3, EOS], [5, EOS], [4, 3, EOS]]
    assert [round(float(np.exp(h.score)), 6) for h in hyps[1]] == [0.3, 0.135, 0.12]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "full_recompute"])
def test_torch_beam_search_keeps_the_long_hypothesis_that_junk_eos_candidates_would_cut(use_cache):
    kwargs = {"beam_size": 2, "n_best": 2, "max_length": 10, "length_penalty": "none", "use_cache": use_cache}
    hyps = decoding.beam_search(ScriptedTranslator(), scripted_src([7, 8]), **kwargs)
    assert [summary(h) for h in hyps] == [JUNK_EOS_EXPECTED, TIE_FULL_EXPECTED]


def test_torch_beam_search_keeps_the_best_normalized_finished_with_the_average_penalty():
    hyps = decoding.beam_search(ScriptedTranslator(), scripted_src([7]), beam_size=2, n_best=2)
    assert [h.tokens for h in hyps[0]] == [[3, 4, 5, EOS], [3, 4, EOS]]
    assert hyps[0][0].normalized_score == pytest.approx(np.log(0.761805) / 4, abs=1e-6)
    assert hyps[0][1].normalized_score == pytest.approx(np.log(0.0405) / 3, abs=1e-6)


def test_greedy_decode_equals_beam_size_one_on_the_scripted_decoder():
    indices = list(range(len(SCRIPTS)))
    greedy = decoding.greedy_decode(ScriptedTranslator(), scripted_src(indices), max_length=5)
    beam = decoding.beam_search(ScriptedTranslator(), scripted_src(indices), beam_size=1, max_length=5)
    assert greedy == [h[0].tokens for h in beam]
    assert greedy[2] == [3, EOS]  # tie between tokens 3 and 4 goes to the lower id


def test_teacher_forced_logprob_sums_the_scripted_log_probs_including_eos():
    tgt = torch.tensor([[3, EOS, PAD], [4, 3, EOS]])
    scores = decoding.teacher_forced_logprob(ScriptedTranslator(), scripted_src([0, 0]), tgt)
    assert scores.tolist() == pytest.approx([np.log(0.6 * 0.5), np.log(0.3 * 0.7 * 0.9)], abs=1e-6)
    with pytest.raises(ValueError, match="eos_id"):
        decoding.teacher_forced_logprob(ScriptedTranslator(), scripted_src([0]), torch.tensor([[3, 4]]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beam_size": 0}, "beam_size"),
        ({"n_best": 5}, "n_best"),
        ({"max_length": 0}, "max_length"),
        ({"min_length": 10, "max_length": 10}, "min_length"),
        ({"length_penalty": "wu"}, "length_penalty"),
        ({"alpha": -1.0}, "alpha"),
    ],
)
def test_invalid_search_arguments_raise_a_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decoding.beam_search(ScriptedTranslator(), scripted_src([0]), **kwargs)


def test_source_ids_that_are_not_a_2d_long_tensor_are_refused():
    with pytest.raises(ValueError, match="src_ids"):
        decoding.greedy_decode(ScriptedTranslator(), torch.tensor([0, EOS]))
    with pytest.raises(ValueError, match="src_ids"):
        decoding.beam_search(ScriptedTranslator(), torch.zeros(2, 3))


# --- real translators from the registry ----------------------------------------------------------------

TRANSLATORS = list_models("translate")
TINY = {"d_model": 16, "heads": 2, "ffn_dim": 32, "encoder_layers": 1, "decoder_layers": 1, "embed_dim": 16}
TINY |= {"hidden_size": 16, "attention_dim": 16, "dropout": 0.0, "src_vocab_size": 24, "tgt_vocab_size": 24}
TINY |= {"max_positions": 32}
needs_translators = pytest.mark.skipif(
    "transformer" not in TRANSLATORS, reason="the transformer translator is not registered yet"
)


def tiny_translator(name: str) -> nn.Module:
    """A random-init translator with the smallest dimensions its config accepts."""
    fields = {f.name for f in dataclasses.fields(get_entry(name).config_cls)}
    torch.manual_seed(0)
    return build_model(name, **{k: v for k, v in TINY.items() if k in fields}).eval()


def random_sources() -> torch.Tensor:
    """Three sources of different lengths, EOS-terminated and right-padded."""
    return torch.tensor([[5, 9, 7, 11, EOS], [6, 4, EOS, PAD, PAD], [13, EOS, PAD, PAD, PAD]])


REAL_MODELS = TRANSLATORS or ["transformer"]  # parametrized over the whole registry


@needs_translators
@pytest.mark.parametrize("name", REAL_MODELS)
def test_beam_size_one_equals_greedy_on_a_tiny_random_translator(name):
    model, src = tiny_translator(name), random_sources()
    greedy = decoding.greedy_decode(model, src, max_length=8)
    beam = decoding.beam_search(model, src, beam_size=1, max_length=8)
    assert greedy == [h[0].tokens for h in beam]


@needs_translators
@pytest.mark.parametrize("name", REAL_MODELS)
def test_hypothesis_scores_equal_teacher_forced_log_probs(name):
    model, src = tiny_translator(name), random_sources()
    hyps = decoding.beam_search(model, src, beam_size=3, n_best=3, max_length=7, length_penalty="none")
    for i, sentence in enumerate(hyps):
        tgt = torch.nn.utils.rnn.pad_sequence([torch.tensor(h.tokens) for h in sentence], batch_first=True)
        expected = decoding.teacher_forced_logprob(model, src[i : i + 1].expand(len(sentence), -1), tgt)
        assert [h.score for h in sentence] == pytest.approx(expected.tolist(), abs=1e-4)


@needs_translators
@pytest.mark.parametrize("name", REAL_MODELS)
def test_decoding_with_and_without_the_cache_gives_the_same_hypotheses(name):
    model, src = tiny_translator(name), random_sources()
    cached = decoding.beam_search(model, src, beam_size=3, n_best=2, max_length=7)
    full = decoding.beam_search(model, src, beam_size=3, n_best=2, max_length=7, use_cache=False)
    assert [[h.tokens for h in s] for s in cached] == [[h.tokens for h in s] for s in full]
    for a, b in zip(cached, full, strict=True):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


class TorchStep:
    """A numpy StepFn over a torch translator's decode_step, state managed by the spec roles."""

    def __init__(self, model: nn.Module, src: torch.Tensor) -> None:
        self.model, self.spec, self.step_index = model, model.step_spec(), 0
        with torch.inference_mode():
            self.state = decoding.init_state(self.spec, model.encode(src), src.shape[0])

    def __call__(self, tokens: np.ndarray, origin: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            self.state = decoding.select_rows(self.state, torch.from_numpy(origin))
            inputs = decoding.decoder_inputs(self.spec, self.state, torch.from_numpy(tokens), self.step_index)
            outputs = self.model.decode_step(inputs)
            self.state = decoding.update_state(self.spec, self.state, outputs)
        self.step_index += 1
        return outputs["log_probs"].numpy()


@needs_translators
@pytest.mark.parametrize("name", REAL_MODELS)
def test_numpy_beam_search_over_the_torch_decode_step_equals_the_torch_reference(name):
    model, src = tiny_translator(name), random_sources()
    kwargs = {"beam_size": 3, "n_best": 3, "max_length": 8, "length_penalty": "average"}
    reference = decoding.beam_search(model, src, **kwargs)
    config = bs.BeamConfig(eos_id=EOS, bos_id=BOS, **kwargs)
    ours = bs.beam_search(TorchStep(model, src), src.shape[0], config)
    assert as_tuples(ours) == as_tuples(reference)


@needs_translators
def test_max_length_beyond_the_models_positions_is_refused():
    model = tiny_translator("transformer")
    with pytest.raises(ValueError, match="max_positions=32"):
        decoding.beam_search(model, random_sources(), max_length=33)
    with pytest.raises(ValueError, match="max_positions=32"):
        decoding.greedy_decode(model, random_sources(), max_length=33)


@needs_translators
def test_a_source_longer_than_the_models_positions_is_refused_by_name_not_an_index_error():
    model = tiny_translator("transformer")
    too_long = torch.full((1, 33), 5, dtype=torch.long)
    for search in (decoding.beam_search, decoding.greedy_decode):
        with pytest.raises(ValueError, match="33 positions.*max_positions=32"):
            search(model, too_long, max_length=8)
    assert decoding.beam_search(model, too_long[:, :32], max_length=8)[0]
