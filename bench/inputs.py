"""What `python -m bench` checks before it measures anything: the entries and checkpoints the chosen
parts read, and an output directory that holds no earlier result. A mistake found here is one line and
exit status 1, not a traceback minutes into the run with everything measured so far lost."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kiln.cli import number

# The parts of the CPU profiles (``--only``), and those that read each kind of input.
PARTS = ("engines", "servers", "translation", "replicas")
USES_CLASSIFIER = {"engines", "servers", "replicas"}
SERVES_CLASSIFIER = {"servers"}  # the naive baseline serves its checkpoint; perf_analyzer drives the gateway
REBUILDS_CLASSIFIER = {"engines", "servers"}  # the PyTorch engine and the naive baseline rebuild its model
NEEDS_TRANSLATOR = {"translation"}  # its entry is served, its checkpoint holds the held-out sentences
RUNS_TRITON = {"servers", "translation"}  # Triton's python-flavour repository goes under <output>/logs
RESULT_FILES = ("results.json", "report.md")


positive_int = number(int, 1)  # an argparse type: threads, processes, sentences
non_negative_int = number(int, 0)  # an argparse type: a warm-up that may be left out


def entry_problem(repository: Path, name: str, task: str, hint: str) -> str | None:
    """Why ``repository/name`` is not an exported entry of ``task``, or None; a missing entry names the
    repository's entries of that task (a model of the user's own is not the default's name)."""
    meta_path = repository / name / "kiln.json"
    if not meta_path.is_file():
        found = entries_of(repository, task)
        held = f" ({task} entries there: {', '.join(found)})" if found else f" (it holds no {task} entry)"
        return f"{repository / name} is not an exported entry{held}: {hint}"
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{meta_path} cannot be read ({exc}): export it again ({hint})"
    if meta.get("task") != task:
        return f"{repository / name} is a {meta.get('task', 'task-less')} entry, not a {task} one"
    return None


def entries_of(repository: Path, task: str) -> list[str]:
    """The names of the repository's exported entries of ``task``, sorted (none where it is unreadable)."""
    names = []
    for meta_path in sorted(repository.glob("*/kiln.json")):
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")).get("task") == task:
                names.append(meta_path.parent.name)
        except (OSError, ValueError, AttributeError):
            continue
    return names


def read_meta(entry: Path) -> dict[str, Any]:
    """The entry's kiln.json, or {} where it cannot be read (its own check says why)."""
    try:
        meta = json.loads((entry / "kiln.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def source_name(meta: dict[str, Any], default: str) -> str:
    """The name the entry's checkpoint was exported as (``source_checkpoint.model``): the base entry
    its precision twins (``<name>_fp16``, ``<name>_int8``...) share, and its checkpoint's file name;
    ``default`` (the entry's own name) where export recorded none."""
    source = meta.get("source_checkpoint")
    name = source.get("model") if isinstance(source, dict) else None
    return name if isinstance(name, str) and name else default


def source_key(meta: dict[str, Any], default: str) -> str:
    """What the entries exported from one checkpoint share: the name it was exported as, else (an
    export older than that record) the checkpoint's path, else ``default``."""
    source = meta.get("source_checkpoint")
    path = source.get("path") if isinstance(source, dict) else None
    fallback = f"path:{path}" if isinstance(path, str) and path else default
    return source_name(meta, fallback)


def classifier_checkpoint(repository: Path, checkpoints: Path, name: str) -> Path:
    """The checkpoint the PyTorch rows of entry ``name`` rebuild (the engines' row and the naive
    baseline alike): its file in ``checkpoints`` (``--checkpoints``), else the path export recorded;
    where neither exists, the first, for the message saying it is missing."""
    meta = read_meta(repository / name)
    source = meta.get("source_checkpoint")
    recorded = source.get("path") if isinstance(source, dict) else None
    candidates = [checkpoints / f"{source_name(meta, name)}.pt"]
    if isinstance(recorded, str) and recorded:
        candidates[:0] = [checkpoints / Path(recorded).name]
        candidates.append(Path(recorded))
    return next((path for path in candidates if path.is_file()), candidates[0])


def model_problem(repository: Path, name: str) -> str | None:
    """Why the PyTorch rows cannot rebuild entry ``name``'s model (a model of the user's own whose
    module is not imported: ``--models-from``), or None. Read from the entry's kiln.json, so that no
    checkpoint is loaded and no module is imported that the user did not name."""
    model = read_meta(repository / name).get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return None
    from training.models.registry import ModelModuleError, ensure_registered

    module = model.get("module")
    try:
        ensure_registered(model["name"], module if isinstance(module, str) else None)
    except ModelModuleError as exc:
        return f"{repository / name / 'kiln.json'}: the PyTorch rows rebuild its model: {exc}"
    return None


def rebuild_problem(repository: Path, checkpoints: Path, name: str) -> str | None:
    """Why the PyTorch rows of entry ``name`` would fail to rebuild its model, or None (also where its
    checkpoint is absent: the engines part then has no PyTorch row, the servers part says so)."""
    if not classifier_checkpoint(repository, checkpoints, name).is_file():
        return None
    return model_problem(repository, name)


def checkpoint_problem(path: Path, parts: str) -> str | None:
    """Why the checkpoint ``path`` cannot be read by ``parts``, or None."""
    if path.is_file():
        return None
    return (
        f"{path} is missing ({parts}; the checkpoint the repository was exported from): pass "
        "--checkpoints, run `make train`, or leave that part out with --only"
    )


def perf_analyzer_problem() -> str | None:
    """Why the perf_analyzer that ``KILN_PERF_ANALYZER`` names cannot run, or None (also when unset)."""
    from bench.perf_analyzer_tool import ENV_BINARY

    named = os.environ.get(ENV_BINARY)
    if named and not (Path(named).is_file() and os.access(named, os.X_OK)):
        return f"{ENV_BINARY}={named} is not an executable file (unset it to use `make perf-analyzer`'s)"
    return None


def output_problem(out: Path) -> str | None:
    """Why ``out`` cannot receive this run's results: a file, a path under a file or a directory this
    user cannot write (found only at the end, with the measurements lost, or as a traceback at
    ``mkdir``), or a directory holding an earlier run's (whose plots would be left beside this run's
    report), or None."""
    if out.exists() and not out.is_dir():
        return f"--output {out} is a file, not a directory"
    existing = next(path for path in (out, *out.parents) if path.exists())
    if not existing.is_dir():
        return f"--output {out} cannot be created: {existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--output {out} cannot be written: {existing} is not writable by this user"
    held = [name for name in RESULT_FILES if (out / name).exists()]
    if held:
        return f"--output {out} already holds a bench result ({', '.join(held)}): choose another directory"
    return None


def cpu_problem(args: Any, wanted: set[str]) -> str | None:
    """The first reason the quick or full profile cannot measure ``wanted`` with ``args``, or None."""
    problem = None
    if wanted & USES_CLASSIFIER:
        hint = f"pass --classifier, run `make export`, {_leave_out(wanted, USES_CLASSIFIER)}"
        problem = entry_problem(args.repository, args.classifier, "classify", hint)
    checkpoint = classifier_checkpoint(args.repository, args.checkpoints, args.classifier)
    if problem is None and wanted & SERVES_CLASSIFIER:
        problem = perf_analyzer_problem() or checkpoint_problem(
            checkpoint, "servers: the naive baseline serves it"
        )
    if problem is None and wanted & REBUILDS_CLASSIFIER:
        problem = rebuild_problem(args.repository, args.checkpoints, args.classifier)
    if problem is None and wanted & NEEDS_TRANSLATOR:
        hint = f"pass --translator, run `make export`, {_leave_out(wanted, NEEDS_TRANSLATOR)}"
        problem = entry_problem(args.repository, args.translator, "translate", hint)
        problem = problem or checkpoint_problem(
            args.checkpoints / f"{args.translator}.pt", "translation: its held-out sentences"
        )
        problem = problem or identity_problem(getattr(args, "identity_translators", None))
    if problem is None and args.output is not None:
        problem = output_problem(args.output)
    if problem is None and wanted & RUNS_TRITON:
        problem = triton_dir_problem(args.output or Path("bench/results"), wanted)
    return problem


def identity_problem(named: list[str] | None) -> str | None:
    """Why ``--identity-translators`` names a translator that is not registered, or None: the bench
    tried to train it, failed, and said so only in the report, after the whole translation part."""
    if not named:
        return None
    from training.models import list_models

    registered = list_models(task="translate")
    unknown = [name for name in dict.fromkeys(named) if name not in registered]
    if not unknown:
        return None
    return (
        f"--identity-translators {' '.join(unknown)}: not a registered translator (registered: "
        f"{', '.join(registered)}; a model of your own: --models-from)"
    )


def triton_dir_problem(out: Path, wanted: set[str]) -> str | None:
    """Why Triton cannot run under ``out`` (where the bench derives its python-flavour repository), or
    None: in a path with whitespace the python backend's stubs exit at load (``std::invalid_argument:
    stol``), and the bench waited 120 s for a Triton that never became ready, in each part."""
    from serving.triton.server import workdir_path_problem

    problem = workdir_path_problem(out)
    if problem:
        return (
            f"--output {out.resolve()} {problem}, where Triton's python backend cannot "
            f"load models: choose an --output without it, {_leave_out(wanted, RUNS_TRITON)}"
        )
    return None


def _leave_out(wanted: set[str], parts: set[str]) -> str:
    """The end of a missing input's hint: ``--only`` naming the wanted parts that do not need it."""
    left = [part for part in PARTS if part in wanted and part in parts]
    rest = [part for part in PARTS if part in wanted and part not in parts]
    if not rest:
        return "or measure another part with --only"
    return f"or leave {' and '.join(left)} out: --only {' '.join(rest)}"
