"""What a request must keep of the axes the graph names. Which may be empty: those a Kiln export's
parity checks ran at 0 (a decoder's cache before its first step); any other named dynamic axis after
the batch axis is refused before the request is queued, since ONNX Runtime aborts the process on some
graphs (a GRU over no tokens); graphs without kiln.json parity checks are left to ONNX Runtime. And one
name is one size in every input that has it (Kiln's attention operators answer a disagreement with NaN)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serving.execution.validation import named_axes, nonempty_axes

CHECKS = {
    "parity": {
        "checks": [
            {"sizes": {"batch": 1, "src_len": 4, "past_len": 0}},
            {"sizes": {"batch": 7, "src_len": 9, "past_len": 3}},
        ]
    }
}


def entry(kiln: dict, max_batch_size: int = 8) -> SimpleNamespace:
    return SimpleNamespace(kiln=kiln, max_batch_size=max_batch_size)


@pytest.mark.parametrize(
    ("shape", "refused"),
    [
        (["batch", "src_len"], ((1, "src_len"),)),
        (["batch", 4, "past_len", 32], ()),
        (["sentences", 4, "src_len", 32], ((2, "src_len"),)),  # axis 0 is the batch axis, whatever its name
        (["batch", None, 8], ()),  # an unnamed axis: nothing known of it
        (["batch"], ()),
    ],
)
def test_the_axes_a_request_may_not_leave_empty(shape, refused):
    assert nonempty_axes(entry(CHECKS), shape) == refused


def test_without_a_batch_axis_the_first_axis_counts_too():
    assert nonempty_axes(entry(CHECKS, max_batch_size=0), ["src_len", 8]) == ((0, "src_len"),)


@pytest.mark.parametrize("kiln", [{}, {"parity": {}}, {"parity": {"checks": []}}])
def test_an_entry_without_parity_checks_refuses_no_axis(kiln):
    assert nonempty_axes(entry(kiln), ["batch", "src_len"]) == ()


def test_no_graph_shape_refuses_nothing():
    assert nonempty_axes(entry(CHECKS), None) == ()


def test_the_named_axes_are_those_after_the_batch_axis_whatever_parity_ran():
    assert named_axes(entry({}), ["batch", 4, "past_len", 32]) == ((2, "past_len"),)
    assert named_axes(entry(CHECKS), ["sentences", "src_len"]) == ((1, "src_len"),)
    assert named_axes(entry({}, max_batch_size=0), ["src_len", None]) == ((0, "src_len"),)
    assert named_axes(entry({}), None) == ()
