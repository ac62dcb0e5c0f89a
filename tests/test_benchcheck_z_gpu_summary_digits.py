"""The GPU profile's serving section prints each target's measured value apart from its goal, as the
report's Targets table does: a value just under the goal must not read as the goal with the verdict "no"."""

from __future__ import annotations

from bench import gpu_serving


def _results(gpu_tokens: float, cpu_tokens: float) -> dict:
    translate = [
        {
            "device": "gpu",
            "workers": 1,
            "concurrency": 32,
            "tokens_per_s": gpu_tokens,
            "same_as_reference": 100.0,
        },
        {
            "device": "cpu",
            "workers": 2,
            "concurrency": 32,
            "tokens_per_s": cpu_tokens,
            "same_as_reference": 100.0,
        },
    ]
    results = {"classify": [], "translate": translate, "identity": {}, "errors": {}}
    results["summary"] = gpu_serving.summary(results)
    return results


def test_a_ratio_just_under_its_goal_is_not_printed_as_the_goal_beside_no() -> None:
    results = _results(2996.0, 1000.0)  # 2.996x against a goal of 3x: not met
    row = next(r for r in results["summary"] if r["target"].startswith("translate c=32"))
    assert row["met"] == "no"
    text = gpu_serving.markdown(results)
    line = next(line for line in text.splitlines() if line.startswith("| translate c=32"))
    assert "| 3.00 | 3.00 | no |" not in line
    assert "| 3.00 | 2.996 | no |" in line


def test_a_ratio_exactly_at_its_goal_is_met_and_printed_with_two_decimals() -> None:
    results = _results(3000.0, 1000.0)
    text = gpu_serving.markdown(results)
    line = next(line for line in text.splitlines() if line.startswith("| translate c=32"))
    assert "| 3.00 | 3.00 | yes |" in line
