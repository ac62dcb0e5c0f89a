"""The translators' identity target where Triton did not run: "–" where the gateway's rows are all
identical (Triton's path unmeasured, never "yes"), but "no" where a gateway row already differs from the
PyTorch reference: that failure is measured, and reading "–" hid it (bench.translation_identity)."""

from __future__ import annotations

from bench.targets import _met
from bench.translation_identity import identity_target

TARGET = "`transformer` through the gateway and Triton identical to the PyTorch reference (%)"


def _target(same: float, differs: int) -> dict:
    rows = [
        {"engine": "gateway (1 worker)", "same_as_reference": 100.0, "differs_from_reference": 0},
        {"engine": "gateway (2 workers)", "same_as_reference": same, "differs_from_reference": differs},
    ]
    target = identity_target("transformer", rows, {"triton": "tritonserver not found"})
    target["met"] = _met(target)
    return target


def test_a_gateway_row_that_differs_reads_no_without_triton() -> None:
    target = _target(97.5, 5)
    assert target["target"] == TARGET
    assert target["measured"] == 97.5 and target["met"] == "no", target
    assert target["note"] == (
        "1 of 2 gateway/Triton rows identical; 5 translations differ in all; "
        "Triton not measured: this run has no Triton row (triton: tritonserver not found)"
    )


def test_identical_gateway_rows_read_a_dash_without_triton() -> None:
    target = _target(100.0, 0)
    assert target["met"] == "–" and target["note"].startswith("not measured: this run has no Triton row")
