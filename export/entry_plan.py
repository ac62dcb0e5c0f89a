"""The entries each checkpoint of a run may write, checked before any work: no two models write one entry.

An entry's name is its model's name (the checkpoint's file name, ``results.entry_name``) plus the suffix
its exporter gives it (``_encoder``, ``_decoder_int8``, ``_fp16_trt``...), so a checkpoint ``foo_encoder.pt``
would write the entry translator ``foo`` writes for its encoder, in the same run or in the repository.
An existing entry belongs to the model named after its source checkpoint's file (kiln.json
``source_checkpoint``): that model, or that very file, may rewrite it; any other is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from export.repository import REFUSALS, RepositoryError, check_not_foreign, read_kiln_json, read_refusal
from export.results import ExportOptions, entry_name
from kiln.cli import listed


@dataclass(frozen=True)
class Plan:
    """One checkpoint of a run: its file, its model's name and every entry its export may write."""

    path: Path
    model: str
    entries: tuple[str, ...]
    task: str | None = None  # classify or translate; None: not read (no task check)

    def describe(self) -> str:
        return f"{self.path} (model {self.model!r}: entries {', '.join(map(repr, sorted(self.entries)))})"


def task_entries(task: str, name: str, options: ExportOptions) -> tuple[str, ...]:
    """The entries model ``name`` of ``task`` may write with ``options``, from its task's exporter
    (imported lazily, as ``pipeline._exporter`` does); an unknown task's checkpoint is refused later."""
    if task == "classify":
        from export.classifier import entry_names
    elif task == "translate":
        from export.translator_entries import entry_names
    else:
        return (name,)
    return entry_names(name, options)


def read_task(path: Path) -> str | None:
    """The task of checkpoint ``path``, its weights mapped, not read; None when it cannot be read (its
    export reports why when its turn comes)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - load_checkpoint names the failure when the file's turn comes
        return None
    task = ckpt.get("task") if isinstance(ckpt, dict) else None
    return task if isinstance(task, str) else None


def plan_run(checkpoints: Iterable[Path], options: ExportOptions) -> list[Plan]:
    """The plan of each checkpoint whose name and task can be read (the others fail at their turn)."""
    plans = []
    for path in checkpoints:
        try:
            name = entry_name(path)
        except ValueError:
            continue
        task = read_task(path)
        if task is not None:
            plans.append(Plan(path, name, task_entries(task, name, options), task))
    return plans


def check_run(plans: Iterable[Plan]) -> None:
    """Refuse two checkpoints of one run that would write one entry (``foo`` and ``foo_encoder``)."""
    writers: dict[str, Plan] = {}
    for plan in plans:
        for entry in plan.entries:
            other = writers.setdefault(entry, plan)
            if other is not plan:
                raise RepositoryError(
                    f"{other.describe()} and {plan.describe()} would both write entry {entry!r}: rename "
                    "one, or export them into separate repositories"
                )


def _owner(entry_dir: Path) -> tuple[str, Path] | None:
    """(model, source checkpoint) of an existing Kiln entry; None when it records no source."""
    return _source_owner((read_kiln_json(entry_dir) or {}).get("source_checkpoint"))


def _source_owner(source: object) -> tuple[str, Path] | None:
    """(model, checkpoint) of a recorded ``source_checkpoint``: the model it names (recorded since the
    forty-third session), else its file's; None when it records no path."""
    path = source.get("path") if isinstance(source, dict) else None
    if not isinstance(path, str):
        return None
    model = source.get("model")  # type: ignore[union-attr]
    if isinstance(model, str) and model:
        return model, Path(path)
    try:
        return entry_name(Path(path)), Path(path)
    except ValueError:
        return None


def _refused_owner(repository: Path, entry: str) -> tuple[str, Path] | None:
    """(model, source checkpoint) of a refusal recorded for ``entry`` (a gate's; no entry written)."""
    return _source_owner((read_refusal(repository, entry) or {}).get("source_checkpoint"))


def check_owners(repository: Path, plans: Iterable[Plan]) -> None:
    """Refuse a plan that would overwrite an entry of ``repository`` another model wrote, take the name
    of an entry another model's gate refused (its record would be dropped, its slot taken), or write
    over a directory Kiln did not write, before any work (each would be found out only when the entry
    is written)."""
    for plan in plans:
        for entry in plan.entries:
            entry_dir = repository / entry
            if not entry_dir.exists():
                owner = _refused_owner(repository, entry)
                if owner is None or owner[0] == plan.model or owner[1].resolve() == plan.path.resolve():
                    continue
                raise RepositoryError(
                    f"entry {entry!r} in {repository} is model {owner[0]!r}'s (from {owner[1]}), refused "
                    f"by its gate (recorded in {repository / REFUSALS}); exporting {plan.path} as model "
                    f"{plan.model!r} would take its name: rename the checkpoint, or export into another "
                    "repository"
                )
            check_not_foreign(entry_dir)
            owner = _owner(entry_dir)
            if owner is not None and owner[0] == plan.model and owner[1].resolve() != plan.path.resolve():
                check_same_task(repository, entry_dir, owner, plan)
            if owner is None or owner[0] == plan.model or owner[1].resolve() == plan.path.resolve():
                continue
            raise RepositoryError(
                f"entry {entry!r} in {repository} belongs to model {owner[0]!r} (from {owner[1]}); "
                f"exporting {plan.path} as model {plan.model!r} would overwrite it: rename the "
                "checkpoint, remove that entry, or export into another repository"
            )


def _task(entry_dir: Path) -> str | None:
    """The task of the model an existing entry serves (a translator's encoder, decoder and python entry:
    translate), or None where its kiln.json does not say."""
    task = (read_kiln_json(entry_dir) or {}).get("task")
    if not isinstance(task, str):
        return None
    return "translate" if task.startswith("translate") else task


def check_same_task(repository: Path, entry_dir: Path, owner: tuple[str, Path], plan: Plan) -> None:
    """Refuse ``plan`` (another checkpoint file of its model's name) where existing entry ``entry_dir``
    of that name serves a model of the other task: a classifier ``transformer.pt`` replaced the translator
    ``transformer``'s python entry and left its encoder and decoder entries serving the old translator,
    without a word."""
    held = _task(entry_dir)
    if plan.task is None or held is None or held == plan.task:
        return
    others = sorted(
        e.name
        for e in repository.iterdir()
        if e.is_dir() and not e.name.startswith(".") and e.name not in plan.entries
        and (_owner(e) or ("",))[0] == owner[0] and _task(e) == held
    )  # fmt: skip
    kind = {"classify": "classifier", "translate": "translator"}
    theirs, mine = kind.get(held, held), kind.get(plan.task, plan.task)
    left = f" and leave its other entries ({listed(others, 4)}) serving the old {theirs}" if others else ""
    raise RepositoryError(
        f"entry {entry_dir.name!r} in {repository} is {theirs} {owner[0]!r}'s (from {owner[1]}); "
        f"{plan.path} is a {mine} checkpoint of the same name: exporting it would replace the {theirs} "
        f"with a {mine}{left}. Rename the checkpoint, export into another repository, or remove the "
        f"{theirs}'s entries first"
    )


def check_entry_plan(checkpoints: Iterable[Path], repository: Path, options: ExportOptions) -> None:
    """Before any work: no two checkpoints of the run write one entry, and none overwrites an entry
    another model wrote into ``repository``."""
    plans = plan_run(checkpoints, options)
    check_run(plans)
    check_owners(Path(repository), plans)
