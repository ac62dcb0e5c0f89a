"""The translator int8 gate's BLEU when no references exist (given sentences, random ids): measured
against the fp32 translations, 100 by definition for fp32. Plain corpus BLEU scored short translations
(no 4-gram in the corpus) 0 against themselves, so any int8 translations scored 0 too: a BLEU drop of 0
that passed the gate however much int8 changed them."""

from __future__ import annotations

from export.beam_parity import gate_bleu
from export.quantize import TranslationGate

FP32 = ["w5 w9", "w7", "w12 w4 w30"]


def _gate(fp32: list[str], int8: list[str]) -> TranslationGate:
    bleu_fp32, bleu_int8 = gate_bleu(fp32, int8, None)
    same = sum(a == b for a, b in zip(fp32, int8, strict=True)) / len(fp32)
    return TranslationGate(same, len(fp32), bleu_fp32, bleu_int8, "fp32 translations", 0.0, 0.2)


def test_short_fp32_translations_score_100_against_themselves():
    assert gate_bleu(FP32, list(FP32), None) == (100.0, 100.0)
    assert _gate(FP32, list(FP32)).passed


def test_changed_short_translations_cost_bleu_and_fail_the_bleu_gate():
    int8 = ["w8 w8", "w9", "w12 w4 w31"]
    bleu_fp32, bleu_int8 = gate_bleu(FP32, int8, None)
    assert bleu_fp32 == 100.0 and bleu_int8 < 50.0
    gate = _gate(FP32, int8)  # agreement opened to 0: BLEU alone decides
    assert not gate.passed and "BLEU drop" in gate.reason()


def test_with_references_bleu_is_sacrebleus_corpus_bleu():
    long_fp32 = ["a b c d e f", "w8"]
    refs = ["a b c d e f", "w7"]
    bleu_fp32, bleu_int8 = gate_bleu(long_fp32, ["a b c d e x", "w8"], refs)
    assert round(bleu_fp32, 2) == 96.22 and bleu_int8 < bleu_fp32


def test_the_int8_gate_on_given_sentences_refuses_changed_short_translations(monkeypatch):
    """``int8_gate`` end to end over stand-in searches: 3 given sentences, translations of 1 to 3 tokens."""
    from types import SimpleNamespace

    from export import beam_parity
    from export.results import ExportOptions

    beams = {"fp32.onnx": [[5, 9], [7], [12, 4, 30]], "int8.onnx": [[8, 8], [9], [12, 4, 31]]}
    data = beam_parity.HeldOut([[4, 5], [6], [7, 8, 9]], None, "given sentences")
    monkeypatch.setattr(beam_parity, "held_out", lambda ctx, spec, n: data)
    monkeypatch.setattr(
        beam_parity, "_onnx_beams", lambda g, decoder, sents, cfg, encoder=None: beams[decoder]
    )
    monkeypatch.setattr(
        beam_parity, "_detokenize", lambda hyps, tok, eos: [" ".join(f"w{t}" for t in h) for h in hyps]
    )
    options = ExportOptions(precisions=("fp32", "int8"), int8_min_agreement=0.0)
    ctx = SimpleNamespace(options=options, ckpt={"tokenizers": {"target": ""}}, accuracy_hook=None, name="t")
    g = SimpleNamespace(spec={"max_positions": 32, "eos_id": 2}, decoder_path="fp32.onnx")
    report, gate = beam_parity.int8_gate(ctx, g, "int8.onnx")
    assert gate.bleu_fp32 == 100.0 and gate.bleu_drop > 50.0
    assert not gate.passed and report.metrics["int8_gate"]["passed"] is False
