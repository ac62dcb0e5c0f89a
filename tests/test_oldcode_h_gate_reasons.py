"""An int8 gate's refusal names a measured figure that reads as past its threshold, never as equal to it."""

from __future__ import annotations

import pytest

from export.quantize import AgreementGate, GateResult, TranslationGate


@pytest.mark.parametrize(
    ("gate", "shown", "threshold"),
    [
        # 251 of ImageNet's 50 000 validation images changed class: 0.502 points
        (GateResult(0.8, 0.8 - 251 / 50_000, 0.5), "0.502", "0.5"),
        (TranslationGate(1.0, 200, 30.0, 29.797, "references"), "0.203", "0.2"),
        (TranslationGate(3979 / 3999, 3999, 30.0, 30.0, "references"), "99.4999", "99.50"),
        (AgreementGate(49_749 / 50_000, 50_000, 0.5, "random"), "99.498", "99.50"),
    ],
)
def test_a_refusal_just_past_the_threshold_shows_enough_digits_to_differ_from_it(gate, shown, threshold):
    assert not gate.passed
    reason = gate.reason()
    assert shown in reason and threshold in reason, reason


def test_refusals_well_past_the_threshold_keep_two_decimals():
    assert GateResult(0.9, 0.88, 0.5).reason() == "int8 top-1 drop 2.00 > 0.5 points"
    reason = TranslationGate(0.99, 200, 30.0, 29.0, "references").reason()
    assert reason == "int8 agreement 99.00% (need >= 99.50%), BLEU drop 1.00 (max 0.2) on 200 sentences"
