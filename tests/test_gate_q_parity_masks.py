"""Parity's tolerance must not be scaled by a mask value (``finfo.min``, ``-1e9``) in an output: one
such value in a log-prob row let a flipped argmax pass at 1e-4."""

import numpy as np
import pytest

from export.parity import compare_outputs
from export.specs import AxisRange, GraphSpec, TensorSpec


def _spec() -> GraphSpec:
    return GraphSpec(
        "dec",
        "decoder",
        (TensorSpec("tokens", "int64", ("batch",), "tokens"),),
        (TensorSpec("log_probs", "float32", ("batch", 4), "log_probs"),),
        {"batch": AxisRange(1, 1, 4)},
    )


@pytest.mark.parametrize("mask", [float(np.finfo(np.float32).min), -1e9])
def test_a_masked_log_prob_does_not_widen_the_tolerance_of_the_others(mask):
    ref = np.array([[-1.2, -0.5, -2.0, mask]], np.float32)
    got = np.array([[-0.5, -1.2, -9.0, mask]], np.float32)  # the argmax flipped
    diffs, errors = compare_outputs(_spec(), {"log_probs": ref}, {"log_probs": got}, 1e-4)
    assert diffs == {"log_probs": 7.0}
    assert errors == ["dec.log_probs: max abs diff 7 > tolerance 0.0002"]


def test_masks_still_pass_when_both_sides_agree_within_their_own_magnitude():
    ref = np.array([[-1.2, -0.5, -2.0, -1e9]], np.float32)
    got = ref + np.array([[5e-5, -5e-5, 0.0, 64.0]], np.float32)  # float32 rounding at 1e9 is 64
    assert compare_outputs(_spec(), {"log_probs": ref}, {"log_probs": got}, 1e-4)[1] == []


def test_a_mask_where_pytorch_has_a_real_value_fails():
    ref = np.array([[-1.2, -0.5, -2.0, -3.0]], np.float32)
    got = np.array([[-1.2, -0.5, -2.0, -1e9]], np.float32)
    _, errors = compare_outputs(_spec(), {"log_probs": ref}, {"log_probs": got}, 1e-4)
    assert errors == ["dec.log_probs: max abs diff 1e+09 > tolerance 0.0003"]


def test_large_real_values_keep_their_relative_tolerance():
    ref = np.array([[300.0, -250.0, 0.25, 1.0]], np.float32)  # logits in the hundreds
    got = ref + np.array([[0.02, -0.02, 0.02, 0.0]], np.float32)  # within 1e-4 x 300 everywhere
    assert compare_outputs(_spec(), {"log_probs": ref}, {"log_probs": got}, 1e-4)[1] == []


def test_a_failure_beside_a_larger_diff_on_a_mask_names_the_value_that_failed():
    ref = np.array([[-1.2, -0.5, -2.0, -1e9]], np.float32)
    got = np.array([[-1.2, -0.5, -2.5, -1e9 + 6400.0]], np.float32)  # the mask within its 1e5
    diffs, errors = compare_outputs(_spec(), {"log_probs": ref}, {"log_probs": got}, 1e-4)
    assert diffs == {"log_probs": 6400.0}
    assert errors == ["dec.log_probs: abs diff 0.5 > tolerance 0.0002"]
