"""Optimizers and learning-rate schedules shared by the classifier and translator trainers.

Schedules are per-iteration multipliers of the base learning rate: a linear warmup, then cosine,
step, inverse-square-root or constant decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("sgd", "nesterov", "adamw", "adam")
SCHEDULES = ("cosine", "step", "inverse_sqrt", "constant")


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.98),
) -> torch.optim.Optimizer:
    """SGD (momentum, optionally Nesterov), Adam or AdamW; no weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if name in ("sgd", "nesterov"):
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=name == "nesterov")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def lr_multiplier(
    step: int,
    *,
    schedule: str,
    warmup_steps: int,
    total_steps: int,
    step_size: int = 0,
    gamma: float = 0.1,
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the base LR at iteration ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        if step_size:
            return gamma ** ((step - warmup_steps) // step_size)
        # Without a step size, thirds of the steps after warm-up: two decays, at 1/3 and 2/3. A size of
        # ``span // 3`` steps fit a fourth stage (gamma**3) into the remainder, or more on a short run.
        span = max(1, total_steps - warmup_steps)
        return gamma ** min(2, 3 * (step - warmup_steps) // span)
    if schedule == "inverse_sqrt":
        return math.sqrt(max(1, warmup_steps)) / math.sqrt(max(step + 1, 1))
    raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str,
    warmup_steps: int,
    total_steps: int,
    step_size: int = 0,
    gamma: float = 0.1,
    min_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR to be stepped once per optimizer step."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")

    def fn(step: int) -> float:
        return lr_multiplier(
            step,
            schedule=schedule,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            step_size=step_size,
            gamma=gamma,
            min_ratio=min_ratio,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def last_step_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> float:
    """The learning rate the latest optimizer step used: after ``scheduler.step()`` the optimizer
    already holds the next step's (0 after the last step of a cosine schedule), which a per-epoch
    record would show against an epoch that never trained with it."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](max(0, scheduler.last_epoch - 1))


def restore_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict) -> None:
    """Continue a schedule from its saved step, the optimizer's learning rates set to this schedule's at
    that step: the restored optimizer holds the saved schedule's, which differ once a resumed run's
    ``--epochs`` changed the schedule's length (a finished cosine's 0 for the lengthened run's first step)."""
    scheduler.load_state_dict(state)
    groups = scheduler.optimizer.param_groups
    for group, base, fn in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]  # what get_last_lr() answers
