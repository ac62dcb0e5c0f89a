"""The fixed export pipeline (CTranslate2 ``Converter.convert`` style): load, freeze, export, check, write.

``export_checkpoint`` turns one Kiln checkpoint into its repository entries; ``export_all`` does every
checkpoint of a list of files/directories. Entries whose checkpoint and artifacts are unchanged are
skipped unless ``force``; a parity failure raises :class:`export.parity.ParityError`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from export.parity import ParityError
from export.results import EntryResult, ExportContext, ExportOptions, entry_name
from training.checkpoint import file_sha256, load_checkpoint, rebuild_model

log = logging.getLogger(__name__)

__all__ = [
    "EntryResult",
    "ExportOptions",
    "ParityError",
    "export_all",
    "export_checkpoint",
    "find_checkpoints",
]


def _exporter(task: str) -> Callable[[ExportContext, Path], list[EntryResult]]:
    """The task's exporter (imported lazily so a classifier export never loads translator code)."""
    if task == "classify":
        from export.classifier import export_classifier

        return export_classifier
    if task == "translate":
        from export.translator import export_translator

        return export_translator
    raise ValueError(f"unknown task {task!r}; expected classify or translate")


def export_checkpoint(
    path: str | os.PathLike,
    repository: str | os.PathLike,
    options: ExportOptions | None = None,
    *,
    name: str | None = None,
    on_step: Callable[[str], None] | None = None,
    validation: Any = None,
    accuracy_hook: Callable | None = None,
    **settings: Any,
) -> list[EntryResult]:
    """Export one checkpoint into ``repository``; returns one result per entry (written, up to date...).

    ``options`` defaults to ``ExportOptions()``; any of its fields given by keyword (``tensorrt="off"``,
    ``precisions=("fp32", "int8")``...) replaces its value, a convenience for tests and scripts.
    ``device="gpu"`` writes GPU configs (KIND_GPU, bucketed batching, Triton's TensorRT accelerator);
    the artifacts and their parity checks are the same on either device."""
    path = Path(path)
    options = dataclasses.replace(options or ExportOptions(), **settings)
    ckpt = load_checkpoint(path)
    ctx = ExportContext(
        path=path,
        ckpt=ckpt,
        model=rebuild_model(ckpt),
        sha256=file_sha256(path),
        repository=Path(repository),
        options=options,
        name=name or entry_name(path),
        on_step=on_step,
        validation=validation,
        accuracy_hook=accuracy_hook,
    )
    ctx.repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-export-") as work:
        return _exporter(ckpt["task"])(ctx, Path(work))


def find_checkpoints(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Checkpoint files named directly, plus every ``*.pt`` (not ``*.resume.pt``) of named directories."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.glob("*.pt") if not f.name.endswith(".resume.pt"))
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such checkpoint file or directory")
    return found


def export_all(
    paths: Iterable[str | os.PathLike] = ("checkpoints",),
    repository: str | os.PathLike = "model_repository",
    **kw: Any,
) -> list[EntryResult]:
    """Export every checkpoint found in ``paths`` (files or directories) into ``repository``."""
    results: list[EntryResult] = []
    for ckpt in find_checkpoints(paths):
        log.info("exporting %s", ckpt)
        results += export_checkpoint(ckpt, repository, **kw)
    return results
