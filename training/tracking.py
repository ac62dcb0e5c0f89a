"""Run tracking shared by the trainers: JSON-lines metrics, learning-curve plots, early stopping."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def check_output_dir(path: str | os.PathLike) -> None:
    """Refuse an ``--output-dir`` that is (or lies under) a file, or that this process could not write
    into (or create), before training rather than at the save; nothing is created here."""
    path = Path(path)
    for part in (path, *path.absolute().parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"--output-dir {path}: {part} is a file, not a directory")
            if not os.access(part, os.W_OK | os.X_OK):
                what = "is not writable" if part == path else f"cannot be created: {part} is not writable"
                raise ValueError(f"--output-dir {path} {what}")
            return


class MetricsLogger:
    """Appends one JSON object per line (one per epoch); the file is readable while training runs."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            self.path.write_text("")

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict[str, Any]], png_path: str | os.PathLike, title: str = "") -> Path | None:
    """Plot every numeric per-epoch series: losses on the left axis, everything else on the right."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    keys = [k for k in records[0] if k not in ("epoch", "lr", "time_s") and _is_number(records[0][k])]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key in keys:
        ax = ax_loss if "loss" in key else ax_metric
        ax.plot(epochs, [r.get(key, math.nan) for r in records], marker="o", label=key)
    for ax, label in ((ax_loss, "loss"), (ax_metric, "metric")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


class EarlyStopping:
    """Stop when the monitored value has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, patience: int, *, mode: str = "max", min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError("mode must be 'max' or 'min'")
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far; NaN never does (nor becomes the best, which no
        later value could then beat: every comparison with NaN is false)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        delta = value - self.best if self.mode == "max" else self.best - value
        return delta > self.min_delta

    def step(self, value: float) -> bool:
        """Record this epoch's value; True means stop now."""
        if self.improved(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.patience > 0 and self.bad_epochs >= self.patience


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
