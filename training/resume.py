"""A classifier run's resume state (``--resume``): where it lives beside a checkpoint, and reading it,
a damaged, truncated or foreign file refused with a ``CheckpointError`` naming it."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import CheckpointError, check_archive
from training.runtime import amp_choice


def resume_path(path: str | os.PathLike) -> Path:
    """``x.resume.pt`` itself, or the ``.resume.pt`` next to a final ``x.pt`` checkpoint."""
    path = Path(path)
    return path if path.name.endswith(".resume.pt") else path.with_name(f"{path.stem}.resume.pt")


# What classify_loop.save_resume writes and a resumed run reads.
RESUME_KEYS = ("epoch", "model_name", "model_args", "model", "optimizer", "scheduler", "data")


def load_resume(path: str, *, mmap: bool = False) -> dict[str, Any]:
    """The resume state behind ``--resume path`` (``mmap`` reads only what is used: resolve's peek);
    a damaged, truncated or foreign file is a ``CheckpointError`` naming it."""
    file = resume_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--resume {path}: no resume state at {file}")
    if not zipfile.is_zipfile(file):
        raise CheckpointError(
            f"--resume {path}: {file} is not a resume state (torch.save writes a zip archive; this is "
            "not one, or a truncated one)"
        )
    try:
        check_archive(file)
    except CheckpointError as exc:
        raise CheckpointError(f"--resume {path}: {exc}") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any failure to read it means "not a usable resume state"
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"--resume {path}: {file} is not a readable resume state ({reason})") from exc
    missing = [key for key in RESUME_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(
            f"--resume {path}: {file} is not a classifier resume state (it lacks {missing}); "
            "training.classify writes one after every epoch"
        )
    return state


def resumed_amp(state: dict[str, Any]) -> str | None:
    """The precision (``bf16``, ``fp16`` or None: float32) the run of a resume state trained with. A file
    written while the classifier's ``--amp`` was a switch holds True, which meant fp16 on CUDA but was
    ignored on a CPU (float32, and a disabled GradScaler's empty state): the scaler's state tells them apart."""
    amp = (state.get("train_config") or {}).get("amp")
    if amp is True and not state.get("scaler"):
        return None
    return amp_choice(amp)
