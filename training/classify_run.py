"""What one classifier training run holds (``Run``): its config, process, data, model, optimizer,
schedule, precision, augmentation and early stopping, and where it stands (the epoch it resumes after,
the best weights so far). A module of its own because the run's steps (``training.classify_loop``), its
epochs (``training.classify_epoch``) and its resume state (``training.classify_resume``) all take it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.classify_config import TrainConfig
from training.data.augment import Augmenter
from training.data.images import DataSpec, ImageDataset
from training.mixed_precision import Amp
from training.runtime import Dist
from training.tracking import EarlyStopping


@dataclass
class Run:
    """Everything one training run holds, passed between the small steps of the run."""

    config: TrainConfig
    dist: Dist
    spec: DataSpec
    train_ds: ImageDataset
    val_ds: ImageDataset
    mean: list[float]
    std: list[float]
    model_name: str
    model_args: dict[str, Any]
    module: nn.Module  # the bare model (what is saved and evaluated)
    model: nn.Module  # what trains: the module itself or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp: Amp  # --amp: the forward's autocast and fp16's gradient scaler
    augmenter: Augmenter
    stopper: EarlyStopping
    start_epoch: int = 0
    stopped_early: bool = False  # the resumed run had stopped early: nothing is left to train
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_val: tuple[float, float] = (-1.0, float("inf"))  # (accuracy, loss)
    train_time_s: float = 0.0

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.amp.scaler

    @scaler.setter
    def scaler(self, scaler: torch.amp.GradScaler) -> None:
        self.amp.scaler = scaler
