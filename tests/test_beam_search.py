"""serving.decoding.beam_search against a scripted fake decoder with hand-computed hypotheses and scores."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from serving.decoding import beam_search as bs
from serving.decoding import compiled_step, native
from serving.decoding.options import options_from_parameters

PAD, BOS, EOS, A, B, C = 0, 1, 2, 3, 4, 5
VOCAB = 6
DEFAULT = {EOS: 0.5, A: 0.25, B: 0.25}  # any prefix a script does not list

# Scripts: generated prefix (no BOS) -> probabilities of the next token (unlisted tokens: 0 -> -inf).
SCRIPT_BEAM2 = {
    (): {EOS: 0.1, A: 0.6, B: 0.3},
    (A,): {EOS: 0.5, A: 0.3, B: 0.2},
    (B,): {EOS: 0.2, A: 0.7, B: 0.1},
    (B, A): {EOS: 0.9, A: 0.05, B: 0.05},
    (A, A): {EOS: 0.4, A: 0.4, B: 0.2},
}
SCRIPT_BEAM3 = {
    (): {EOS: 0.05, A: 0.5, B: 0.3, C: 0.15},
    (A,): {EOS: 0.6, A: 0.2, B: 0.1, C: 0.1},
    (B,): {EOS: 0.1, A: 0.5, B: 0.2, C: 0.2},
    (C,): {EOS: 0.9, A: 0.1},
    (B, A): {EOS: 0.8, A: 0.2},
    (A, A): {EOS: 0.5, B: 0.5},
    (B, B): {EOS: 0.3, A: 0.7},
}
SCRIPT_TIE = {(): {EOS: 0.2, A: 0.4, B: 0.4}, (A,): {EOS: 1.0}, (B,): {EOS: 1.0}}
# A confident model whose junk EOS candidates rank 2nd at steps 0 and 1 (beam 2): fairseq's "done at beam
# finalized" returned [EOS] and [A, EOS]; the right [A, B, C, EOS] only ends at step 3.
SCRIPT_JUNK_EOS = {
    (): {A: 0.9, EOS: 0.06, B: 0.04},
    (A,): {B: 0.9, EOS: 0.05, C: 0.05},
    (B,): {EOS: 0.5, C: 0.5},
    (A, B): {C: 0.95, EOS: 0.05},
    (A, C): {EOS: 0.5, A: 0.5},
    (A, B, C): {EOS: 0.99, A: 0.01},
}
# Beam 2, no penalty: [EOS] .25 at step 0, then [A, EOS] .25 fills the list and [B, EOS] .25 ties the worst.
SCRIPT_TIE_FULL = {
    (): {A: 0.5, EOS: 0.25, B: 0.25},
    (A,): {EOS: 0.5, C: 0.4, B: 0.1},
    (B,): {EOS: 1.0},
}
# Hand-computed (tokens, probability) with beam 2, n_best 2, no length penalty; shared with test_decoding.
JUNK_EOS_EXPECTED = [([A, B, C, EOS], 0.761805), ([EOS], 0.06)]  # .9 * .9 * .95 * .99
TIE_FULL_EXPECTED = [([EOS], 0.25), ([A, EOS], 0.25)]


@pytest.fixture(autouse=True, params=["numpy", "compiled"])
def implementation(request, monkeypatch):
    """Every test here runs on the numpy step (the definition) and on the compiled one."""
    if request.param == "compiled":
        if native.load() is None:
            pytest.skip("the compiled beam step could not be built here (no C compiler, or KILN_NATIVE=0)")
        monkeypatch.setattr(bs, "step", compiled_step.step)
    return request.param


def log_probs_for(script: dict, prefix: tuple[int, ...]) -> np.ndarray:
    """The scripted float32 log-probs after ``prefix`` (generated tokens, BOS excluded)."""
    probs = np.zeros(VOCAB, dtype=np.float64)
    for token, p in script.get(prefix, DEFAULT).items():
        probs[token] = p
    with np.errstate(divide="ignore"):
        return np.log(probs).astype(np.float32)


def random_script(seed: int, depth: int = 6) -> dict:
    """A deterministic pseudo-random script over every prefix up to ``depth`` tokens."""
    rng = np.random.default_rng(seed)
    script, frontier = {}, [()]
    for _ in range(depth):
        nxt = []
        for prefix in frontier:
            p = rng.dirichlet(np.ones(4))
            script[prefix] = {EOS: p[0], A: p[1], B: p[2], C: p[3]}
            nxt += [prefix + (t,) for t in (A, B, C)]
        frontier = nxt
    return script


class ScriptedDecoder:
    """Fake decoder: each row's log-probs come from its sentence's script, looked up by its prefix."""

    def __init__(self, scripts: list[dict]) -> None:
        self.scripts = scripts
        self.rows: list[tuple[int, tuple[int, ...]]] = [(i, ()) for i in range(len(scripts))]
        self.calls: list[int] = []

    def step(self, tokens: np.ndarray, origin: np.ndarray) -> np.ndarray:
        gathered = [self.rows[o] for o in origin]
        self.rows = [
            (s, p if t == BOS else p + (int(t),)) for (s, p), t in zip(gathered, tokens, strict=True)
        ]
        self.calls.append(len(tokens))
        return np.stack([log_probs_for(self.scripts[s], p) for s, p in self.rows])


def run(scripts: list[dict], **kwargs) -> list[list[bs.Hypothesis]]:
    kwargs = {"beam_size": 2, "n_best": 2, "max_length": 10, "length_penalty": "none"} | kwargs
    return bs.beam_search(ScriptedDecoder(scripts).step, len(scripts), bs.BeamConfig(**kwargs))


def summary(hyps: list[bs.Hypothesis]) -> list[tuple[list[int], float]]:
    return [(h.tokens, round(math.exp(h.score), 6)) for h in hyps]


def test_beam_two_finds_the_hand_computed_hypotheses_in_score_order():
    hyps = run([SCRIPT_BEAM2])[0]
    assert summary(hyps) == [([A, EOS], 0.3), ([B, A, EOS], 0.189)]
    assert hyps[0].score == pytest.approx(math.log(0.6) + math.log(0.5), abs=1e-6)
    assert hyps[1].score == pytest.approx(math.log(0.3) + math.log(0.7) + math.log(0.9), abs=1e-6)


def stepwise(script: dict, **kwargs) -> tuple[list[list[tuple[list[int], float]]], list[int]]:
    """Drive step() by hand: the finished list after every step, and the decoder's row counts."""
    kwargs = {"beam_size": 2, "n_best": 2, "max_length": 10, "length_penalty": "none"} | kwargs
    decoder = ScriptedDecoder([script])
    beams, origin, tokens = bs.start([bs.BeamConfig(**kwargs)]), np.array([0]), np.array([BOS])
    history = []
    while not beams.done[0]:
        beams, origin, tokens = astuple(bs.step(beams, decoder.step(tokens, origin)))
        history.append(summary(list(beams.finished[0])))
    assert beams.rows.tolist() == [0] and tokens.size == 0
    return history, decoder.calls


def astuple(result: bs.StepResult) -> tuple[bs.Beams, np.ndarray, np.ndarray]:
    return result.beams, result.origin, result.tokens


def test_beam_three_stops_once_no_live_row_can_beat_the_worst_finished():
    history, calls = stepwise(SCRIPT_BEAM3, beam_size=3, n_best=3)
    # step 1 finalizes ranks 0 and 2; step 2 fills the list with [B, A, EOS] .12 and drops [A, A, EOS] .05,
    # and the best live row [A, A, B] .05 cannot beat .12.
    assert history == [
        [],
        [([A, EOS], 0.3), ([C, EOS], 0.135)],
        [([A, EOS], 0.3), ([C, EOS], 0.135), ([B, A, EOS], 0.12)],
    ]
    assert calls == [1, 3, 3]  # one live row at step 0, then the beam


def test_junk_eos_candidates_that_fill_the_list_early_do_not_end_the_sentence():
    history, calls = stepwise(SCRIPT_JUNK_EOS)
    assert history == [
        [([EOS], 0.06)],
        [([EOS], 0.06), ([A, EOS], 0.045)],  # full, but live [A, B] .81 beats .045: go on
        [([EOS], 0.06), ([A, EOS], 0.045)],  # [A, B, EOS] .0405 is worse than the worst kept: dropped
        [([A, B, C, EOS], 0.761805), ([EOS], 0.06)],  # evicts [A, EOS]; [A, C, A, EOS] .01125 dropped
    ]
    assert calls == [1, 2, 2, 2]  # live [A, B, C, A] .007695 <= .06 ends it after step 3
    assert summary(run([SCRIPT_JUNK_EOS])[0]) == JUNK_EOS_EXPECTED


def test_junk_eos_with_the_average_penalty_keeps_the_best_normalized_finished():
    hyps = run([SCRIPT_JUNK_EOS], length_penalty="average", alpha=1.0)[0]
    # step 2: [A, B, EOS] log(.0405)/3 = -1.069 evicts [EOS] log(.06)/1 = -2.813; step 3: [A, B, C, EOS]
    # log(.761805)/4 = -0.068 evicts [A, EOS] log(.045)/2 = -1.551; live [A, B, C, A] log(.007695)/4 = -1.216.
    assert [h.tokens for h in hyps] == [[A, B, C, EOS], [A, B, EOS]]
    assert hyps[0].normalized_score == pytest.approx(math.log(0.761805) / 4, abs=1e-6)
    assert hyps[1].normalized_score == pytest.approx(math.log(0.0405) / 3, abs=1e-6)


def test_a_newcomer_that_only_ties_the_worst_of_a_full_list_is_dropped():
    history, calls = stepwise(SCRIPT_TIE_FULL)
    # step 1: [A, EOS] .25 fills the list, [B, EOS] .25 (rank 1) ties the worst and is dropped, and the
    # best live row [A, C] .2 cannot beat .25.
    assert history == [[([EOS], 0.25)], TIE_FULL_EXPECTED]
    assert calls == [1, 2]
    assert summary(run([SCRIPT_TIE_FULL])[0]) == TIE_FULL_EXPECTED


def test_eos_outside_the_first_beam_ranks_is_not_finalized():
    cfg = bs.BeamConfig(beam_size=3, n_best=1, max_length=10)
    beams, origin, tokens = astuple(bs.step(bs.start([cfg]), log_probs_for(SCRIPT_BEAM3, ())[None]))
    assert beams.finished == ((),)  # EOS ranked 4th of 6 candidates
    assert tokens.tolist() == [A, B, C] and origin.tolist() == [0, 0, 0]


def test_min_length_blocks_eos_and_exact_ties_go_to_the_lower_flat_index():
    hyps = run([SCRIPT_BEAM2], min_length=2)[0]
    # step 2: [A, A, EOS] and [A, A, A] tie at .072; EOS has the lower flat index, so it ranks first.
    assert summary(hyps) == [([B, A, EOS], 0.189), ([A, A, EOS], 0.072)]
    assert all(len(h.tokens) >= 3 for h in hyps)


def test_max_length_forces_eos_on_every_live_row():
    assert summary(run([SCRIPT_BEAM2], max_length=2)[0]) == [([A, EOS], 0.3), ([B, EOS], 0.06)]
    assert summary(run([SCRIPT_BEAM2], max_length=1)[0]) == [([EOS], 0.1)]


def test_n_best_returns_only_the_best_hypotheses():
    assert summary(run([SCRIPT_BEAM3], beam_size=3, n_best=1)[0]) == [([A, EOS], 0.3)]
    assert len(run([SCRIPT_BEAM3], beam_size=3, n_best=3)[0]) == 3


def test_average_length_penalty_reorders_by_hand_computed_normalized_scores():
    hyps = run([SCRIPT_BEAM2], length_penalty="average", alpha=1.0)[0]
    assert [h.tokens for h in hyps] == [[B, A, EOS], [A, EOS]]
    assert hyps[0].normalized_score == pytest.approx(math.log(0.189) / 3, abs=1e-6)
    assert hyps[1].normalized_score == pytest.approx(math.log(0.3) / 2, abs=1e-6)
    hyps = run([SCRIPT_BEAM2], length_penalty="average", alpha=0.5)[0]
    assert [h.tokens for h in hyps] == [[A, EOS], [B, A, EOS]]  # a weaker penalty flips the order back
    assert hyps[1].normalized_score == pytest.approx(math.log(0.189) / 3**0.5, abs=1e-6)


def test_gnmt_length_penalty_gives_the_hand_computed_normalized_scores():
    hyps = run([SCRIPT_BEAM2], length_penalty="gnmt", alpha=2.0)[0]
    assert [h.tokens for h in hyps] == [[A, EOS], [B, A, EOS]]
    assert hyps[0].normalized_score == pytest.approx(math.log(0.3) / (7 / 6) ** 2, abs=1e-6)
    assert hyps[1].normalized_score == pytest.approx(math.log(0.189) / (8 / 6) ** 2, abs=1e-6)


def test_no_length_penalty_keeps_the_raw_score():
    hyps = run([SCRIPT_BEAM2])[0]
    assert all(h.normalized_score == h.score for h in hyps)


def test_ties_are_broken_deterministically_by_lower_token_id():
    assert summary(run([SCRIPT_TIE], beam_size=1, n_best=1)[0]) == [([A, EOS], 0.4)]
    assert [h.tokens for h in run([SCRIPT_TIE])[0]] == [[A, EOS], [B, EOS]]


def greedy(script: dict, max_length: int) -> list[int]:
    """Plain argmax decoding with the same max_length rule."""
    out: list[int] = []
    while not out or out[-1] != EOS:
        token = EOS if len(out) == max_length - 1 else int(np.argmax(log_probs_for(script, tuple(out))))
        out.append(token)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_beam_size_one_equals_greedy_decoding(seed):
    script = random_script(seed)
    hyps = run([script], beam_size=1, n_best=1, max_length=5)
    assert hyps[0][0].tokens == greedy(script, 5)


def test_sentences_decoded_together_equal_each_decoded_alone():
    scripts = [random_script(s) for s in range(4)] + [SCRIPT_BEAM2, SCRIPT_BEAM3]
    together = run(scripts, beam_size=3, n_best=3, max_length=6, length_penalty="average")
    alone = [run([s], beam_size=3, n_best=3, max_length=6, length_penalty="average")[0] for s in scripts]
    assert together == alone


def test_finished_sentences_leave_the_batch():
    never_ends = {
        p: {EOS: 0.01, A: 0.5, B: 0.49} for n in range(6) for p in itertools.product((A, B), repeat=n)
    }
    decoder = ScriptedDecoder([SCRIPT_BEAM2, never_ends])
    bs.beam_search(decoder.step, 2, bs.BeamConfig(beam_size=2, max_length=6))
    # SCRIPT_BEAM2 finishes after 3 steps; the other goes on alone up to max_length.
    assert decoder.calls == [2, 4, 4, 2, 2, 2]


def test_evolve_equals_dataclasses_replace_and_refuses_unknown_fields():
    beams = bs.start([bs.BeamConfig(beam_size=2, max_length=5), bs.BeamConfig(beam_size=3, max_length=4)])
    rows = np.array([2, 0], dtype=np.int64)
    evolved = bs.evolve(beams, rows=rows, finished=((), ()))
    replaced = dataclasses.replace(beams, rows=rows, finished=((), ()))
    for field in dataclasses.fields(bs.Beams):
        a, b = getattr(evolved, field.name), getattr(replaced, field.name)
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b, field.name
    assert beams.rows.tolist() == [1, 1]  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolved.rows = rows
    with pytest.raises(TypeError, match="no fields"):
        bs.evolve(beams, row=rows)


def test_keep_best_inserts_after_every_hypothesis_at_least_as_good_and_keeps_the_best_beam():
    def hyp(norm: float) -> bs.Hypothesis:
        return bs.Hypothesis([7], norm, norm)

    kept: list[bs.Hypothesis] = []
    for norm in (-2.0, -1.0, -3.0, -1.0, -0.5, -4.0, float("nan")):
        bs.keep_best(kept, hyp(norm), 3)
    assert [h.normalized_score for h in kept] == [-0.5, -1.0, -1.0]
    first_tie = kept[1]
    bs.keep_best(kept, hyp(-1.0), 3)  # ties the worst of a full list: dropped, the earlier stays
    assert kept[1] is first_tie and [h.normalized_score for h in kept] == [-0.5, -1.0, -1.0]
    rng = np.random.default_rng(0)  # the rule as written, on random offers with ties and NaN
    for _ in range(200):
        beam, got, want = int(rng.integers(1, 5)), [], []
        for norm in rng.choice([-3.0, -2.0, -1.0, -0.5, float("nan")], size=int(rng.integers(1, 12))):
            h = hyp(float(norm))
            bs.keep_best(got, h, beam)
            at = next((i for i, k in enumerate(want) if k.normalized_score < h.normalized_score), len(want))
            want.insert(at, h)
            del want[beam:]
        assert [id(h) for h in got] == [id(h) for h in want]


def test_removing_sentences_without_rows_keeps_every_row_and_drops_their_per_sentence_fields():
    configs = [bs.BeamConfig(beam_size=b, max_length=6) for b in (1, 2, 3)]
    beams = bs.evolve(
        bs.start(configs),
        rows=np.array([1, 0, 2], dtype=np.int64),
        scores=np.array([-1.0, -2.0, -3.0], dtype=np.float32),
        prefixes=np.arange(21, dtype=np.int64).reshape(3, 7),
    )
    smaller, row_stay = bs.remove(beams, np.array([False, True, False]))
    assert row_stay.tolist() == [0, 1, 2]
    assert smaller.beam.tolist() == [1, 3] and smaller.rows.tolist() == [1, 2]
    assert smaller.scores.tolist() == [-1.0, -2.0, -3.0] and smaller.prefixes.shape == (3, 7)
    assert len(smaller.finished) == 2
    leaving_rows, row_stay = bs.remove(beams, np.array([True, False, False]))
    assert row_stay.tolist() == [1, 2] and leaving_rows.scores.tolist() == [-2.0, -3.0]


def test_a_step_offsets_origins_into_the_shared_call():
    cfg = bs.BeamConfig(beam_size=2, max_length=10)
    beams = bs.start([cfg, cfg])
    lp = np.stack([log_probs_for(SCRIPT_BEAM2, ()), log_probs_for(SCRIPT_TIE, ())])
    beams, origin, tokens = astuple(bs.step(beams, lp))
    assert origin.tolist() == [0, 0, 1, 1] and tokens.tolist() == [A, B, A, B]
    with pytest.raises(ValueError, match="log_probs"):
        bs.step(beams, lp)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beam_size": 0}, "beam_size"),
        ({"n_best": 3, "beam_size": 2}, "n_best"),
        ({"max_length": 0}, "max_length"),
        ({"min_length": 5, "max_length": 5}, "min_length"),
        ({"min_length": -1}, "min_length"),
        ({"length_penalty": "wu"}, "length_penalty"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"eos_id": 1, "bos_id": 1}, "differ"),
        ({"beam_size": 2.5}, "beam_size"),
    ],
)
def test_invalid_configs_raise_a_value_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bs.BeamConfig(**kwargs)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, bs.DEFAULTS),
        ({"beam_size": 3, "n_best": 2.0, "max_length": "12"}, bs.DecodingOptions(3, 2, 12)),
        (
            {"alpha": 1, "length_penalty": "gnmt", "other": "ignored"},
            bs.DecodingOptions(alpha=1.0, length_penalty="gnmt"),
        ),
        ({"alpha": "0.5"}, bs.DecodingOptions(alpha=0.5)),
    ],
)
def test_request_parameters_become_options_typed_by_their_defaults(params, expected):
    assert options_from_parameters(params) == expected


@pytest.mark.parametrize(
    "params",
    [
        {"beam_size": 2.5},
        {"beam_size": True},
        {"beam_size": "wide"},
        {"alpha": "high"},
        {"alpha": False},
        {"alpha": 10**400},  # an integer beyond any float
        {"beam_size": "\u00b2"},  # a digit to str.isdigit, not to int
        {"beam_size": "--5"},  # digits after every leading minus, not an integer to int
        {"max_length": "9" * 5000},  # more digits than int() converts
        {"length_penalty": 1},
    ],
)
def test_request_parameters_of_the_wrong_type_raise_a_value_error_naming_them(params):
    with pytest.raises(ValueError, match=next(iter(params))):
        options_from_parameters(params)


def test_log_probs_of_the_wrong_shape_are_refused():
    beams = bs.start([bs.BeamConfig(beam_size=2)])
    with pytest.raises(ValueError, match="log_probs"):
        bs.step(beams, np.zeros((2, VOCAB), dtype=np.float32))


@pytest.mark.parametrize(("seed", "spread"), [(0, 7), (1, 7), (2, 3000)])
def test_top_candidates_equal_a_full_stable_sort_even_with_many_ties(seed, spread):
    rng = np.random.default_rng(seed)
    cand = rng.integers(-spread, 0, size=(3, 200)).astype(np.float32)  # heavy ties, or values far apart
    cand[rng.random((3, 200)) < 0.2] = -np.inf
    flat, top = bs.top_candidates(cand, 8)
    expected = np.argsort(-cand, axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(flat, expected)
    np.testing.assert_array_equal(top, np.take_along_axis(cand, expected, axis=1))


def test_top_candidates_pad_rows_with_fewer_finite_candidates_with_minus_inf():
    cand = np.full((2, 10), -np.inf, dtype=np.float32)
    cand[0, [7, 2]] = [-1.0, -1.0]  # a tie: the lower column first
    cand[1, :] = -np.arange(10, dtype=np.float32)
    flat, top = bs.top_candidates(cand, 4)
    assert flat.tolist() == [[2, 7, 10, 10], [0, 1, 2, 3]]
    assert top.tolist() == [[-1.0, -1.0, -np.inf, -np.inf], [0.0, -1.0, -2.0, -3.0]]


def test_output_tokens_stop_at_the_first_eos_and_drop_bos_and_padding():
    assert bs.output_tokens([1, 7, 0, 8, 2, 9], eos_id=2, pad_id=0, bos_id=1) == [7, 8]
    assert bs.output_tokens([7, 8], eos_id=2, pad_id=0, bos_id=1) == [7, 8]


def test_sentences_of_mixed_beam_sizes_share_one_step_and_get_their_solo_results():
    configs = [bs.BeamConfig(beam_size=b, n_best=1, max_length=10, length_penalty="none") for b in (1, 3, 2)]
    scripts = [SCRIPT_BEAM2, SCRIPT_BEAM3, SCRIPT_BEAM2]
    decoder = ScriptedDecoder(scripts)
    beams, origin, tokens = bs.start(configs), np.arange(3), np.full(3, BOS)
    beams, origin, tokens = astuple(bs.step(beams, decoder.step(tokens, origin)))
    # step 0, one row each. Beam 1: A .6. Beam 3: A .5, B .3, C .15 (EOS .05 ranks 4th). Beam 2: A .6, B .3.
    assert beams.rows.tolist() == [1, 3, 2]
    assert tokens.tolist() == [A, A, B, C, A, B] and origin.tolist() == [0, 1, 1, 1, 2, 2]
    np.testing.assert_allclose(np.exp(beams.scores), [0.6, 0.5, 0.3, 0.15, 0.6, 0.3], rtol=1e-6)
    while tokens.size:
        beams, origin, tokens = astuple(bs.step(beams, decoder.step(tokens, origin)))
    together = [bs.results(beams, i) for i in range(3)]
    alone = [run([s], **dataclasses.asdict(c))[0] for s, c in zip(scripts, configs, strict=True)]
    assert together == alone
    assert summary(together[0]) == [([A, EOS], 0.3)]  # greedy: A .6 then EOS .5
    assert summary(together[1]) == [([A, EOS], 0.3)] and summary(together[2]) == [([A, EOS], 0.3)]


def test_a_sentence_joining_between_steps_and_one_leaving_keep_their_solo_results():
    cfg = bs.BeamConfig(beam_size=2, n_best=2, max_length=10, length_penalty="none")
    first = ScriptedDecoder([SCRIPT_BEAM2])
    beams, origin, tokens = astuple(bs.step(bs.start([cfg]), first.step(np.array([BOS]), np.array([0]))))
    # SCRIPT_TIE joins after one step: its BOS row goes after the two live rows of SCRIPT_BEAM2.
    beams = bs.concat(beams, bs.start([cfg]))
    assert beams.rows.tolist() == [2, 1] and beams.step.tolist() == [1, 0]
    lp = np.concatenate([first.step(tokens, origin), log_probs_for(SCRIPT_TIE, ())[None]])
    beams, origin, tokens = astuple(bs.step(beams, lp))
    # SCRIPT_BEAM2 step 1: [B, A] .21 and [A, A] .18 continue; [A, EOS] .3 is finished. SCRIPT_TIE: A, B .4.
    assert tokens.tolist() == [A, A, A, B] and origin.tolist() == [1, 0, 2, 2]
    assert summary(list(beams.finished[0])) == [([A, EOS], 0.3)]
    # SCRIPT_TIE leaves (its client went away): its rows go, SCRIPT_BEAM2's rows stay first.
    beams, kept = bs.remove(beams, np.array([False, True]))
    assert kept.tolist() == [0, 1] and beams.sentences == 1
    assert run([SCRIPT_BEAM2])[0] == _finish(beams, first, tokens[kept], origin[kept])


def _finish(beams: bs.Beams, decoder: ScriptedDecoder, tokens: np.ndarray, origin: np.ndarray):
    while tokens.size:
        beams, origin, tokens = astuple(bs.step(beams, decoder.step(tokens, origin)))
    return bs.results(beams, 0)


def test_a_sentence_with_nan_log_probs_fails_alone_and_the_others_finish_unchanged():
    cfg = bs.BeamConfig(beam_size=2, n_best=2, max_length=10, length_penalty="none")
    decoder = ScriptedDecoder([SCRIPT_BEAM2, SCRIPT_BEAM3, SCRIPT_TIE])
    beams, origin, tokens = bs.start([cfg] * 3), np.arange(3), np.full(3, BOS)
    poisoned = False
    while tokens.size:
        lp = decoder.step(tokens, origin)
        if not poisoned:  # the second sentence's row turns to NaN in the first step
            lp[1, A], poisoned = np.nan, True
        beams, origin, tokens = astuple(bs.step(beams, lp))
    assert beams.failed.tolist() == [False, True, False]
    assert [bs.results(beams, i) for i in (0, 2)] == [run([SCRIPT_BEAM2])[0], run([SCRIPT_TIE])[0]]


def test_an_alpha_that_would_overflow_the_length_penalty_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        bs.BeamConfig(alpha=1e308, max_length=64)
    assert bs.BeamConfig(alpha=bs.LIMITS.max_alpha, max_length=bs.LIMITS.max_length).alpha == 10.0
