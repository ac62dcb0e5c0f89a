"""The fixed export pipeline (CTranslate2 ``Converter.convert`` style): load, freeze, export, check, write.

``export_checkpoint`` turns one Kiln checkpoint into its repository entries; ``export_all`` does every
checkpoint of a list of files/directories. Entries whose checkpoint and artifacts are unchanged are
skipped unless ``force``; a parity failure raises :class:`export.parity.ParityError`. Before any work, a
run is refused where two models would write one entry (``check_entry_names``, ``entry_plan``).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import re
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from export.entry_plan import Plan, check_entry_plan, check_owners, read_task, task_entries
from export.freeze import FreezeError
from export.onnx_export import OnnxExportError
from export.parity import ParityError
from export.repository import (
    VERSION,
    RepositoryError,
    check_repository,
    entry_versions,
    name_path,
    policy_problem,
    read_kiln_json,
    sweep_all_leftovers,
    version_source,
    writing_version,
)
from export.results import EntryResult, ExportContext, ExportOptions, entry_name, label_problem
from export.work_dir import work_directory
from export.writer_lock import writer_lock
from kiln.versions import EXPORT_VERSION, current_version
from training.checkpoint import CheckpointError, file_sha256, load_checkpoint, rebuild_model
from training.models.registry import get_entry

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "EntryResult",
    "ExportOptions",
    "ParityError",
    "check_entry_names",
    "check_entry_plan",
    "check_versions",
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


# The keywords of export_checkpoint / export_all that set an ExportOptions field.
OPTION_FIELDS = frozenset(f.name for f in dataclasses.fields(ExportOptions))

# What each task's exporter reads from the checkpoint beyond the contract's required keys.
TASK_KEYS = {"classify": ("preprocessing",), "translate": ("tokenizers",)}
PREPROCESSING_KEYS = ("input_size", "channels", "mean", "std")


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_task_keys(ckpt: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint that lacks what its task's exporter reads, naming what is missing."""
    task = ckpt["task"]
    if not isinstance(task, str) or task not in TASK_KEYS:
        raise CheckpointError(f"{path}: unknown task {task!r}; expected classify or translate")
    missing = [k for k in TASK_KEYS[task] if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: a {task} checkpoint needs {missing}; it has none")
    if task == "classify":
        prep = ckpt["preprocessing"]
        lacking = [k for k in PREPROCESSING_KEYS if not isinstance(prep, dict) or k not in prep]
        if lacking:
            raise CheckpointError(f"{path}: its 'preprocessing' lacks {lacking}")
        problem = preprocessing_problem(prep, ckpt["model"].get("args") or {})
        if problem:
            raise CheckpointError(f"{path}: {problem}")
        problem = label_problem(ckpt.get("labels"))
        if problem:
            raise CheckpointError(f"{path}: {problem}")
    if task == "translate":
        problem = tokenizer_problem(ckpt["tokenizers"])
        if problem:
            raise CheckpointError(f"{path}: its 'tokenizers' {problem}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def preprocessing_problem(prep: dict[str, Any], model_args: dict[str, Any]) -> str | None:
    """What keeps a classifier checkpoint's ``preprocessing`` from describing images its model takes
    (``model_args``: its constructor arguments), or None. Export builds its example input and the
    graph's normalization from it, and a mismatch (3 channels for a model of 1, a mean per channel
    for a channel of 1) ended in a traceback of the model's forward, or in a refusal calling the
    zoo's model unexportable ("a model of Kiln's own: please report it")."""
    size, channels = prep["input_size"], prep["channels"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(map(_positive_int, size))):
        return f"'preprocessing.input_size' must be [height, width] in pixels, got {size!r}"
    if not _positive_int(channels):
        return f"'preprocessing.channels' must be a positive integer, got {channels!r}"
    takes = model_args.get("in_channels")
    if _positive_int(takes) and takes != channels:
        return f"'preprocessing.channels' is {channels}, but the model takes {takes} (its in_channels)"
    for key in ("mean", "std"):
        values = prep[key]
        numbers = isinstance(values, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        )
        if not numbers or len(values) not in (1, channels):
            count = (
                "1 finite number" if channels == 1 else f"1 or {channels} (one per channel) finite numbers"
            )
            return f"'preprocessing.{key}' must be a list of {count}, got {values!r}"
    if not all(v > 0 for v in prep["std"]):
        return f"'preprocessing.std' must be positive (pixels are divided by it), got {prep['std']!r}"
    return None


def tokenizer_problem(tokenizers: Any) -> str | None:
    """What keeps a translator checkpoint's ``tokenizers`` (``{"source": json, "target": json}``, each a
    serialized ``tokenizers`` Tokenizer) from being written as its entry's tokenizer files, or None."""
    if not isinstance(tokenizers, dict):
        return f"must be a dict of 'source' and 'target' tokenizer JSON, got {type(tokenizers).__name__}"
    missing = [k for k in ("source", "target") if not isinstance(tokenizers.get(k), str)]
    if missing:
        return f"lacks {missing} (a serialized tokenizers.Tokenizer each)"
    from tokenizers import Tokenizer

    for side in ("source", "target"):
        try:
            Tokenizer.from_str(tokenizers[side])
        except Exception as exc:  # noqa: BLE001 - the Rust parser's error is a bare Exception
            return f"{side!r} is not a tokenizers JSON ({_one_line(str(exc), 120)})"
    return None


def rebuild_checked(ckpt: dict[str, Any], path: Path) -> Any:
    """``rebuild_model``, with an unknown model, unknown constructor arguments or weights that do not
    fit the architecture refused as a :class:`CheckpointError` naming the file, not a traceback."""
    try:
        return rebuild_model(ckpt)
    except ValueError as exc:  # CheckpointError, and a model config's refusal of an argument's value
        raise CheckpointError(f"{path}: {exc}") from exc
    except KeyError as exc:  # the registry's "unknown model" (its message is the KeyError's argument)
        raise CheckpointError(f"{path}: {exc.args[0] if exc.args else exc}") from exc
    except TypeError as exc:
        raise CheckpointError(f"{path}: the model's arguments do not fit it ({exc})") from exc
    except RuntimeError as exc:
        message = _one_line(str(exc))
        raise CheckpointError(f"{path}: the weights do not fit the architecture ({message})") from exc


def moved_data(ckpt: dict[str, Any], data_path: str | os.PathLike | None) -> dict[str, Any]:
    """``ckpt`` reading the data it was trained on from ``data_path`` (export's ``--data-path``), where
    the run's recorded path (a classifier's ``data``, a translator's ``train_config``) is not this
    machine's or the data moved: the parity checks and the int8 gates rebuild the run's validation or
    test split from it, instead of random inputs. Nothing else of the checkpoint changes, and nothing
    of it is written."""
    if data_path is None:
        return ckpt
    place = Path(data_path).expanduser()
    if not place.exists():
        raise ValueError(f"--data-path {data_path}: no such file or directory")
    key = "data" if ckpt["task"] == "classify" else "train_config"
    return {**ckpt, key: {**(ckpt.get(key) or {}), "data_path": str(place.resolve())}}


def export_checkpoint(
    path: str | os.PathLike,
    repository: str | os.PathLike,
    options: ExportOptions | None = None,
    *,
    name: str | None = None,
    on_step: Callable[[str], None] | None = None,
    validation: Any = None,
    accuracy_hook: Callable | None = None,
    data_path: str | os.PathLike | None = None,
    **settings: Any,
) -> list[EntryResult]:
    """Export one checkpoint into ``repository``; returns one result per entry (written, up to date...).

    ``options`` defaults to ``ExportOptions()``; any of its fields given by keyword (``tensorrt="off"``,
    ``precisions=("fp32", "int8")``...) replaces its value, a convenience for tests and scripts.
    ``device="gpu"`` writes GPU configs (KIND_GPU, bucketed batching, Triton's TensorRT accelerator);
    the artifacts and their parity checks are the same on either device. ``data_path``: where the data
    the checkpoint was trained on is now (:func:`moved_data`)."""
    path = Path(path)
    options = dataclasses.replace(options or ExportOptions(), **settings)
    check_repository(Path(repository))
    with writer_lock(Path(repository)):
        return _export_locked(
            path, Path(repository), options, name, on_step, validation, accuracy_hook, data_path
        )


def _export_locked(
    path: Path,
    repository: Path,
    options: ExportOptions,
    name: str | None,
    on_step: Callable[[str], None] | None,
    validation: Any,
    accuracy_hook: Callable | None,
    data_path: str | os.PathLike | None = None,
) -> list[EntryResult]:
    """``export_checkpoint``'s work, under the repository's writer lock."""
    before = _identity(path)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt["model"].get("args"), dict):
        raise CheckpointError(f"{path}: 'model' must be {{'name': str, 'args': dict}}")
    check_task_keys(ckpt, path)
    ckpt = moved_data(ckpt, data_path)
    name = name or entry_name(path)
    # a killed run's staging, even where every entry is up to date; first: an entry put back is checked
    sweep_all_leftovers(repository)
    entries = task_entries(ckpt["task"], name, options)
    check_owners(repository, [Plan(path, name, entries, ckpt["task"])])
    sha256 = file_sha256(path)
    if _identity(path) != before:
        raise CheckpointError(
            f"{path} was replaced while export read it (a training run saving it?): its weights and its "
            "sha256 could be of different files; export it again once the file is no longer written"
        )
    version = version_to_write(repository, entries, options, path, sha256)
    ctx = ExportContext(
        path=path,
        ckpt=ckpt,
        model=rebuild_checked(ckpt, path),
        sha256=sha256,
        repository=repository,
        options=options,
        name=name,
        on_step=on_step,
        validation=validation,
        accuracy_hook=accuracy_hook,
        data_path=data_path,
    )
    with work_directory() as work, writing_version(version, options.version_policy):
        try:
            results = _exporter(ckpt["task"])(ctx, Path(work))
        except FreezeError as exc:  # the model's fault, not the run's: name the checkpoint
            raise FreezeError(f"{path}: {exc}") from exc
        except (OnnxExportError, torch.onnx.OnnxExporterError) as exc:  # torch's message spans pages
            if interrupted(exc):  # a Ctrl-C that torch.onnx turned into an error of its own
                raise KeyboardInterrupt from exc
            disk = disk_error(exc)
            if disk is not None:  # a full TMPDIR while writing a graph: the run's fault, not the model's
                raise OSError(disk.errno, disk.strerror, disk.filename or str(work)) from exc
            raise NotExportable(f"{path}: {not_exportable(ckpt['model']['name'], exc)}") from exc
        except OSError as exc:  # the entries' own writes name their staging paths (write_entry)
            name_path(exc, Path(work))
            raise
    for result in results:
        result.version = version
    return results + stale_entries(ctx.repository, path, ctx.sha256, {r.entry for r in results})


def _identity(path: Path) -> tuple[int, ...] | None:
    """What changes when checkpoint ``path`` is replaced or rewritten (its inode, size, modification
    time), or None where it cannot be read: a training run saving it (``save_checkpoint``: a new file
    renamed over it) between export's load and its hash recorded the new file's sha256 beside the old
    file's weights, and every later export found the entry up to date, serving the old weights."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def version_to_write(
    repository: Path, entries: Iterable[str], options: ExportOptions, path: Path, sha256: str
) -> str:
    """The version directory the checkpoint ``path`` (``sha256``) is written as, the same for every one
    of its ``entries`` (a translator's three, an int8 twin): ``options.version``; ``next``: one above
    the highest any of them holds, or that highest where it is this checkpoint's already (a rerun
    finds it up to date); none given: the highest version exported from this checkpoint where they hold
    one (the old checkpoint exported again to roll back, ``--version-policy specific:1``), else version
    1, or the version their kiln.json says was written last where they hold others. Refused, before any work, where that version holds a model exported from
    another checkpoint and the entry holds other versions or the version was named, unless
    ``replace_version``: clients naming that version would get another model without a word; and where
    ``options.version_policy`` (or, none given, the one an entry's config has) would serve none of an
    entry's versions once it is written (``specific:1`` for a new ``_int8`` twin of version 2), found
    out before only as that entry was written, after the others."""
    entries = tuple(entries)
    held = {e: entry_versions(repository / e) for e in entries}
    held = {e: versions for e, versions in held.items() if versions}
    if options.version == "next":
        highest = max((int(v) for versions in held.values() for v in versions), default=0)
        mine = any(version_source(repository / e, str(highest)) == sha256 for e in held)
        version = str(highest if highest and mine else highest + 1)
    elif options.version is not None:
        version = options.version
    elif own := _own_versions(repository, held, sha256):
        version = max(own, key=int)  # this checkpoint's version again (a rollback: 1 served once more)
    else:
        written = [str((read_kiln_json(repository / e) or {}).get("version", VERSION)) for e in held]
        written = [v for v in written if v in held_versions(held)]
        versioned = any(versions != [VERSION] for versions in held.values())
        version = max(written, key=int, default=VERSION) if versioned else VERSION
    for entry, versions in held.items():
        if options.replace_version or version not in versions:
            continue
        if options.version is None and versions == [version]:
            continue  # the entry's only version, replaced by a new checkpoint's export as ever
        source = version_source(repository / entry, version)
        if source == sha256:
            continue
        recorded = (
            f"another checkpoint (sha256 {source[:12]})" if source else "a checkpoint kiln.json does not name"
        )
        raise RepositoryError(
            f"version {version} of entry {entry!r} in {repository} (versions {', '.join(versions)}) holds "
            f"the model exported from {recorded}, not {path}: clients naming version {version} would get "
            "another model. Write a new version with --version next (or another number), or write over "
            "this one with --replace-version"
        )
    for entry in entries:
        versions = sorted({*held.get(entry, []), version}, key=int)
        problem = policy_problem(repository / entry, options.version_policy, versions)
        if problem:
            new = "a new entry holds only the version written now; " if entry not in held else ""
            twin = "build no TensorRT engine (--tensorrt off)" if entry.endswith("_trt") else None
            raise RepositoryError(
                f"{problem}: {new}name one of them (--version-policy specific:V), use latest:N or all"
                + (f", or {twin or 'leave its precision out (--precisions)'}" if new and held else "")
            )
    return version


def check_versions(checkpoints: Iterable[Path], repository: Path, options: ExportOptions) -> None:
    """Before any checkpoint of a run is written, what its turn would refuse that is cheap to know: a
    file name that gives no entry name, a file that is no checkpoint of a task export knows, and the
    version each would be written as and the version policy it would get (``version_to_write``). A run
    of several checkpoints wrote those before the one refused, leaving the repository half rolled out.
    Nothing heavier than reading each file's task and hashing it is done (no parity check). A killed
    run's leftovers are swept first, as each turn does: an entry it had swapped out is put back, not
    judged a new one."""
    sweep_all_leftovers(repository)
    for path in checkpoints:
        name = entry_name(path)  # ValueError, as at its turn
        task = read_task(path)
        if task not in TASK_KEYS:  # not readable as a checkpoint, or of no task: its refusal now
            ckpt = load_checkpoint(path)
            if not (isinstance(ckpt["task"], str) and ckpt["task"] in TASK_KEYS):
                check_task_keys(ckpt, path)
            continue
        entries = task_entries(task, name, options)
        version_to_write(repository, entries, options, path, file_sha256(path))


def _own_versions(repository: Path, held: dict[str, list[str]], sha256: str) -> list[str]:
    """The versions in ``held`` (entry -> its versions) exported from the checkpoint of ``sha256``."""
    return [
        v for e, versions in held.items() for v in versions if version_source(repository / e, v) == sha256
    ]


def held_versions(held: dict[str, list[str]]) -> set[str]:
    """Every version directory name in ``held`` (entry -> its versions)."""
    return {v for versions in held.values() for v in versions}


# a write's failures that are the filesystem's (full, over quota, read-only, failing), not the model's
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def disk_error(exc: BaseException) -> OSError | None:
    """The filesystem's error (``DISK_ERRNOS``) that an ONNX export failure was raised from, if any: the
    graph's write to the working directory failed (the TorchScript retry on a full TMPDIR), which is no
    fault of the model's forward."""
    seen: BaseException | None = exc
    for _ in range(20):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in DISK_ERRNOS:
            return seen
        seen = seen.__cause__
    return None


def interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt (Ctrl-C, or a SIGTERM, which export makes one) is in ``exc``'s chain
    of causes and contexts: torch.onnx interrupted while it imports a module (torch._dynamo's, at a
    process's first export) fails later on the half-imported module ("module 'torch._dynamo' has no
    attribute 'exc'") and raises an export error of its own, which was reported as the model's fault
    ("cannot be exported to ONNX ... please report it"), exit 1, instead of "interrupted", exit 130."""
    seen: set[int] = set()
    chain: list[BaseException | None] = [exc]
    while chain:
        link = chain.pop()
        if link is None or id(link) in seen or len(seen) > 50:
            continue
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        chain += [link.__cause__, link.__context__]
    return False


class NotExportable(FreezeError):
    """A model whose forward torch.export cannot trace or whose ops ONNX lacks (a FreezeError, so that
    the command reports it in one line as the other faults of a model)."""


def not_exportable(model: str, exc: BaseException) -> str:
    """One line for an ONNX export failure: the model, the innermost cause, the model's own line that
    raised it, and what an exportable model must do."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    reason = _one_line(re.sub(r"\x1b\[[0-9;]*m", "", str(root).strip().split("\n\n")[0]), 300)
    head = f"model {model!r} cannot be exported to ONNX: {type(root).__name__}: {reason or '-'}{_model_line(root)}"
    if _in_zoo(model):  # Kiln's own model: not the user's forward to change, a fault of Kiln's or torch's
        return f"{head}; a model of Kiln's own: please report it with this line"
    return (
        f"{head}; its forward must trace with torch.export for any batch size (no Python branch on a "
        "tensor's values, no loop over the batch) and use only ops ONNX has (README, 'Your own classifier')"
    )


def _in_zoo(model: str) -> bool:
    try:
        return get_entry(model).in_zoo
    except KeyError:
        return False


def _model_line(exc: BaseException) -> str:
    """`` at file:line (code)`` of the innermost frame in the model's code (neither torch's nor export's
    wrappers around it) that ``exc`` passed through, or nothing (a graph conversion runs none)."""
    skip = (str(Path(torch.__file__).parent), str(Path(__file__).parent))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(skip)]
    return (
        f" at {frames[-1].filename}:{frames[-1].lineno} ({(frames[-1].line or '').strip()})" if frames else ""
    )


def stale_entries(repository: Path, path: Path, sha256: str, done: set[str]) -> list[EntryResult]:
    """Entries an earlier run wrote from checkpoint file ``path`` that this run did not produce (e.g.
    ``<name>_int8`` of a run with more precisions) and that are not current: written when it held other
    weights, or by an older Kiln (:func:`outdated_by`). Still in the repository and served, so reported
    (status "stale") rather than left silent: after an upgrade, an export of fp32 alone would otherwise
    read as all done while the int8 entries stay as the older Kiln wrote them. Never removed here."""
    stale = []
    for entry in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        meta = read_kiln_json(entry) if entry.name not in done else None
        source = meta.get("source_checkpoint") if isinstance(meta, dict) else None
        if not isinstance(source, dict) or not isinstance(source.get("path"), str):
            continue
        if Path(source["path"]).resolve() != path.resolve():
            continue
        if source.get("sha256") not in (None, sha256):
            why = f"written from an earlier {path} (sha256 {str(source['sha256'])[:12]})"
        else:
            why = outdated_by(entry, meta)
        if why:
            message = (
                f"stale: {why}, not requested this run, still served; export its precision again or remove it"
            )
            stale.append(
                EntryResult(entry.name, str(meta.get("precision", "-")), "stale", message=message, path=entry)
            )
    return stale


def outdated_by(entry: Path, meta: dict[str, Any]) -> str | None:
    """How an older Kiln wrote ``entry`` (its kiln.json ``meta``) otherwise than export writes it now, or
    None: an export version before the last that changed its model (``kiln.versions.CHANGED``), or, for
    a translator's python entry, other copies of model.py and the beam search modules (Triton runs them)."""
    export, model = meta.get("export"), meta.get("model")
    written = export.get("export_version") if isinstance(export, dict) else None
    model = model.get("name") if isinstance(model, dict) else None
    if isinstance(written, int) and written < current_version(model):
        return f"written by an older Kiln (export version {written}, now {EXPORT_VERSION})"
    if meta.get("platform") == "python":
        from export.translator_entries import stale_runtime  # translator code, for translator entries only

        if stale_runtime(entry.parent, [entry.name]):
            return "written by an older Kiln (other copies of model.py and the beam search modules)"
    return None


def find_checkpoints(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Checkpoint files named directly, plus every ``*.pt`` (not ``*.resume.pt``) of named directories;
    each file once, however many of ``paths`` name it."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.glob("*.pt") if not f.name.endswith(".resume.pt"))
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such checkpoint file or directory")
    unique: dict[Path, Path] = {}
    for f in found:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def check_entry_names(checkpoints: Iterable[Path]) -> None:
    """Refuse, before any work, two checkpoints whose file names give the same entry name (``a/x.pt``
    and ``b/x.pt``, or ``x.1.pt`` and ``x_1.pt``): the second would overwrite the first's entries. The
    names derived from them (``x_encoder``, ``x_int8``...) are ``entry_plan.check_entry_plan``'s."""
    owners: dict[str, Path] = {}
    for path in checkpoints:
        try:
            name = entry_name(path)
        except ValueError:
            continue  # refused by check_versions, before any checkpoint is written
        if name in owners:
            raise RepositoryError(
                f"{owners[name]} and {path} would both be exported as entry {name!r} (entry names come "
                "from file names): rename one, or export them into separate repositories"
            )
        owners[name] = path


def export_all(
    paths: Iterable[str | os.PathLike] = ("checkpoints",),
    repository: str | os.PathLike = "model_repository",
    **kw: Any,
) -> list[EntryResult]:
    """Export every checkpoint found in ``paths`` (files or directories) into ``repository``."""
    results: list[EntryResult] = []
    checkpoints = find_checkpoints(paths)
    check_entry_names(checkpoints)
    settings = {k: v for k, v in kw.items() if k in OPTION_FIELDS}
    options = dataclasses.replace(kw.get("options") or ExportOptions(), **settings)
    check_repository(Path(repository))
    with writer_lock(Path(repository)):  # the plan holds until the last checkpoint is written
        check_entry_plan(checkpoints, Path(repository), options)
        check_versions(checkpoints, Path(repository), options)
        for ckpt in checkpoints:
            log.info("exporting %s", ckpt)
            results += export_checkpoint(ckpt, repository, **kw)
    return results
