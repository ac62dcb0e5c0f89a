"""Parity's mask rule (values from 1e6 in magnitude bound only themselves) took a real, positive value
of 1e6 or more for a mask: an output whose top logit was 1.2e6 held its other values to 1e-4 x their
own few units, under float32's rounding of sums that large (a ulp of 1e6 is 0.0625), so an export that
passed parity with a top logit of 9.9e5 failed it with one of 1.01e6. Masks (``finfo.min``, ``-1e9``)
are negative; a positive value is computed and lends its output its relative slack as before."""

import numpy as np

from export.parity import compare_outputs
from export.specs import AxisRange, GraphSpec, TensorSpec


def _spec() -> GraphSpec:
    return GraphSpec(
        "clf",
        "classifier",
        (TensorSpec("images", "uint8", ("batch",), "images"),),
        (TensorSpec("logits", "float32", ("batch", 4), "logits"),),
        {"batch": AxisRange(1, 1, 4)},
    )


def _check(top: float) -> list[str]:
    ref = np.array([[top, 3.0, -5.0, 2.0]], np.float32)
    got = ref + np.array([[0.0625, 0.1, -0.1, 0.05]], np.float32)  # float32 rounding at this scale
    return compare_outputs(_spec(), {"logits": ref}, {"logits": got}, 1e-4)[1]


def test_a_top_logit_past_1e6_keeps_the_relative_tolerance_of_one_below_it():
    assert _check(9.9e5) == []
    assert _check(1.01e6) == []
    assert _check(1.2e6) == []


def test_a_wrong_value_beside_a_large_logit_still_fails():
    ref = np.array([[1.2e6, 3.0, -5.0, 2.0]], np.float32)
    got = ref + np.array([[0.0, 500.0, 0.0, 0.0]], np.float32)
    assert compare_outputs(_spec(), {"logits": ref}, {"logits": got}, 1e-4)[1] == [
        "clf.logits: max abs diff 500 > tolerance 120"
    ]


def test_a_negative_mask_still_bounds_only_itself():
    ref = np.array([[-1.2, -0.5, -2.0, -1e9]], np.float32)
    got = np.array([[-0.5, -1.2, -9.0, -1e9]], np.float32)
    assert compare_outputs(_spec(), {"logits": ref}, {"logits": got}, 1e-4)[1] == [
        "clf.logits: max abs diff 7 > tolerance 0.0002"
    ]
