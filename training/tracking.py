"""Run tracking shared by the trainers: JSON-lines metrics, learning-curve plots, early stopping."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kiln.names import model_name

log = logging.getLogger(__name__)


def check_output_dir(path: str | os.PathLike, name: str | None = None) -> None:
    """Refuse an ``--output-dir`` that is (or lies under) a file, or that this process could not write
    into (or create), before training rather than at the save; nothing is created here. So too the
    folders a ``--name`` puts before its file stem (``runs/exp1/model``): one that was a file stopped the
    run in a bare ``[Errno 17] File exists``, naming no flag, exit status 1."""
    path = Path(path)
    _check_dir(path, f"--output-dir {path}")
    folder = Path(path, name).parent if name else path
    if folder != path:
        _check_dir(folder, f"--name {name} (in --output-dir {path})")


def _check_dir(path: Path, flag: str) -> None:
    for part in (path, *path.absolute().parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"{flag}: {part} is a file, not a directory")
            if not os.access(part, os.W_OK | os.X_OK):
                what = "is not writable" if part == path else f"cannot be created: {part} is not writable"
                raise ValueError(f"{flag} {what}")
            return


def check_name(name: str) -> None:
    """Refuse a new run's ``--name`` whose checkpoint would be a hidden file: a name ending in ``/`` (or
    empty, ``.``, ``..``, ``.x``) wrote ``.pt``, ``.resume.pt`` and ``.metrics.jsonl``, which ``ls``
    does not show, and export, which names a model by the checkpoint's file name, refused the checkpoint
    after the training ("cannot derive a model name")."""
    file = Path(f"{name}.pt").name
    if file.startswith("."):
        raise ValueError(
            f"--name {name!r}: the checkpoint would be {file!r}, a hidden file that export cannot name a "
            "model by; give a file stem such as 'model' (folders before it are kept: 'runs/exp1/model')"
        )
    if model_name(Path(file).stem) is None:
        first = file[0]
        why = (  # a character other than A-Z, a-z, 0-9, '_' and '-' ('é', '#') export writes as '_'
            f"starts with {first!r}"
            if first in "_-"
            else f"starts with {first!r}, which export writes as '_' (it keeps only A-Z, a-z, 0-9, '_' "
            "and '-')"
        )
        raise ValueError(
            f"--name {name!r}: export names a model by its checkpoint's file name, and no model name may "
            f"start with '_' or '-': {file!r} {why}; give a file stem such as 'model' (folders before it "
            "are kept: 'runs/exp1/model')"
        )


# The files of an earlier run under a --name that a new run replaces at its first record, its resume
# state first (nothing of it can be resumed once any of it is gone). Its checkpoint and curves are not
# among them: a trained model stays until the new run writes its own over it (save_checkpoint's atomic
# replace), so a new run that fails, a --finetune of that very checkpoint included, never loses it.
RUN_FILE_SUFFIXES = (".resume.pt", ".metrics.jsonl")


def run_files(output_dir: str | os.PathLike, name: str) -> list[Path]:
    """The files of a run named ``name`` that ``output_dir`` holds (``RUN_FILE_SUFFIXES``)."""
    paths = (Path(output_dir) / f"{name}{suffix}" for suffix in RUN_FILE_SUFFIXES)
    return [path for path in paths if path.is_file()]


class MetricsLogger:
    """Appends one JSON object per line (one per epoch); the file is readable while training runs.

    A new run under the name of an earlier one (``replacing``: that run's ``RUN_FILE_SUFFIXES`` files)
    leaves them whole until its first record, then removes them before writing it: a run that fails or
    is interrupted before then leaves the earlier run as it was, and one stopped later leaves its own
    metrics and resume state (``--resume`` continues it) beside the earlier checkpoint, which only the
    new run's own replaces. ``records``, a resumed
    run's kept ones (even none), start the file at once: that run has something to keep."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        replacing: Iterable[Path] = (),
        records: Iterable[dict[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self._replacing = list(replacing)
        self._started = False
        if records is not None or not self._replacing:
            self._start(records or ())
        else:
            log.info(
                "%s: an earlier run's files under this name are replaced at this run's first record: %s",
                self.path.parent,
                ", ".join(p.name for p in self._replacing),
            )

    def _start(self, records: Iterable[dict[str, Any]]) -> None:
        """Remove the earlier run's files, then begin the file with ``records``."""
        for earlier in self._replacing:
            earlier.unlink(missing_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(_line(record) for record in records), encoding="utf-8")
        self._started = True

    def begin(self) -> None:
        """Start the file now if no record has yet, removing the earlier run's files first: for a state
        the run writes before its first record (a resume state), which that removal must not take."""
        if not self._started:
            self._start(())

    def log(self, record: dict[str, Any]) -> None:
        self.begin()
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(_line(record))


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=float) + "\n"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics file. A last line with no newline that is not JSON is a record whose
    append failed part-way (a full disk, a killed process): left out with a warning, so ``--resume``
    goes on (it rewrites the file with the records it keeps). Any other line that is not a record is
    an error naming the file and the line: it was the JSON parser's bare "Expecting ',' delimiter"."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            if number == len(lines):  # after the last newline: a record written in part
                log.warning("%s: its last line is a record cut short, left out: %r", path, line[:80])
                continue
            raise ValueError(f"{path}: line {number} is not a JSON record ({exc})") from exc
    return records


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
