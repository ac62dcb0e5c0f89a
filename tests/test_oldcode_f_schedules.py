"""The learning-rate schedules' values where a run reads them: the ``step`` schedule without a step
size decays twice, at a third and two thirds of the steps after warm-up, however many steps there are."""

from __future__ import annotations

import pytest
from torch import nn

from training.optim import build_optimizer, build_scheduler, lr_multiplier


def step_schedule(warmup: int, total: int) -> list[float]:
    kw = {"schedule": "step", "warmup_steps": warmup, "total_steps": total}
    return [lr_multiplier(step, **kw) for step in range(warmup, total)]


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("span", [3, 4, 5, 8, 10, 11, 100])
def test_the_step_schedule_has_three_stages_whatever_the_number_of_steps(warmup, span):
    values = step_schedule(warmup, warmup + span)
    # was 4 stages (gamma**3 on the last steps) when span % 3 != 0, and 5 at span 5 (1e-4 at the end)
    assert sorted(set(values), reverse=True) == pytest.approx([1.0, 0.1, 0.01])
    assert values[-1] == pytest.approx(0.01)
    first_decay = values.index(pytest.approx(0.1))
    second_decay = values.index(pytest.approx(0.01))
    assert first_decay == -(-span // 3)  # the first step at or past a third of the span
    assert second_decay == -(-2 * span // 3)


def test_the_step_schedule_of_a_run_ends_at_gamma_squared():
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, "sgd", lr=1.0)
    scheduler = build_scheduler(optimizer, schedule="step", warmup_steps=0, total_steps=10)
    used = []
    for _ in range(10):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used == pytest.approx([1.0] * 4 + [0.1] * 3 + [0.01] * 3)  # was [...] + [0.01] * 3 + [0.001]


def test_an_explicit_step_size_decays_every_step_size_steps():
    kw = {"schedule": "step", "warmup_steps": 2, "total_steps": 100, "step_size": 10}
    values = [lr_multiplier(step, **kw) for step in (2, 11, 12, 31, 37, 99)]
    assert values == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.001, 1e-9])
