"""Corpus BLEU as training logs it, export's int8 gate measures it and the bench reports it: one
function (``training.translation_eval.corpus_bleu``). Plain corpus BLEU scored a held-out split of
translations of 3 tokens or fewer (no 4-gram anywhere) 0 however right they were: validation BLEU
stayed 0 (early stopping then kept the first validation's weights) and the int8 gate, given references,
measured a BLEU drop of 0 - 0 whatever int8 translated."""

from __future__ import annotations

import pytest
import sacrebleu

from bench.translation_rows import bleu as bench_bleu
from export.beam_parity import gate_bleu
from export.quantize import TranslationGate
from training.translation_eval import corpus_bleu, score_translations

SHORT_REFS = ["quatre-vingt-dix-sept maisons", "onze boîtes", "huit cent", "en 1910"]
LONG_REFS = [
    "le chat est sur le tapis .",
    "ça coûte cinq euros, « merci » !",
    "Nous avons huit vieux billets",
]


def test_right_translations_of_a_short_corpus_score_100_not_0():
    assert score_translations(list(SHORT_REFS), SHORT_REFS)["bleu"] == 100.0


def test_better_translations_of_a_short_corpus_score_higher():
    worse = ["maisons", "boîtes boîtes", "cent huit", "en"]
    better = ["quatre-vingt-dix-sept maisons", "onze boîtes", "cent huit", "en"]
    assert (
        0.0 < score_translations(worse, SHORT_REFS)["bleu"] < score_translations(better, SHORT_REFS)["bleu"]
    )


def test_the_int8_gate_with_references_refuses_changed_short_translations():
    int8 = ["maisons", "boîtes boîtes", "cent huit", "en"]
    bleu_fp32, bleu_int8 = gate_bleu(list(SHORT_REFS), int8, SHORT_REFS)
    assert round(bleu_fp32, 6) == 100.0 and bleu_fp32 - bleu_int8 > 50.0
    gate = TranslationGate(0.25, 4, bleu_fp32, bleu_int8, "references", 0.0, 0.2)  # BLEU alone decides
    assert not gate.passed and "BLEU drop" in gate.reason()


@pytest.mark.parametrize(
    "hyps",
    [
        list(LONG_REFS),
        ["le chat est sur le tapis", "ça coûte 5 euros, merci !", "nous avons huit vieux billets"],
        ["", "ça coûte cinq euros", "Nous avons huit vieux billets"],
    ],
)
def test_with_a_4_gram_every_place_gives_sacrebleus_corpus_bleu(hyps):
    plain = sacrebleu.corpus_bleu(hyps, [LONG_REFS]).score
    assert corpus_bleu(hyps, LONG_REFS) == pytest.approx(plain, abs=1e-9)
    assert score_translations(hyps, LONG_REFS)["bleu"] == round(plain, 3)
    assert bench_bleu(hyps, LONG_REFS) == round(plain, 2)
    assert gate_bleu(hyps, hyps, LONG_REFS)[0] == pytest.approx(plain, abs=1e-9)


def test_the_three_places_agree_on_a_short_corpus():
    hyps = ["quatre-vingt-dix-sept maisons", "onze", "cent huit", "en 1910"]
    training = score_translations(hyps, SHORT_REFS)["bleu"]
    assert training > 0.0
    assert bench_bleu(hyps, SHORT_REFS) == round(training, 2)
    assert round(gate_bleu(hyps, hyps, SHORT_REFS)[0], 3) == training


def test_empty_translations_score_0():
    assert corpus_bleu(["", ""], ["a b", "c"]) == 0.0
