"""What `python -m bench` checks before it measures anything: the entries and checkpoints the chosen
parts read, and an output directory that holds no earlier result. A mistake found here is one line and
exit status 1, not a traceback minutes into the run with everything measured so far lost."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kiln.cli import number

# The parts of the CPU profiles that read each kind of input.
USES_CLASSIFIER = {"engines", "servers", "replicas"}
SERVES_CLASSIFIER = {"servers"}  # the naive baseline serves its checkpoint; perf_analyzer drives the gateway
NEEDS_TRANSLATOR = {"translation"}  # its entry is served, its checkpoint holds the held-out sentences
RESULT_FILES = ("results.json", "report.md")


positive_int = number(int, 1)  # an argparse type: threads, processes, sentences
non_negative_int = number(int, 0)  # an argparse type: a warm-up that may be left out


def entry_problem(repository: Path, name: str, task: str, hint: str) -> str | None:
    """Why ``repository/name`` is not an exported entry of ``task``, or None."""
    meta_path = repository / name / "kiln.json"
    if not meta_path.is_file():
        return f"{repository / name} is not an exported entry: {hint}"
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return f"{meta_path} cannot be read ({exc}): export it again ({hint})"
    if meta.get("task") != task:
        return f"{repository / name} is a {meta.get('task', 'task-less')} entry, not a {task} one"
    return None


def checkpoint_problem(checkpoints: Path, name: str, parts: str) -> str | None:
    """Why ``checkpoints/name.pt`` cannot be read by ``parts``, or None."""
    path = checkpoints / f"{name}.pt"
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
    """Why ``out`` cannot receive this run's results: a file, or a directory holding an earlier run's
    (whose plots would be left beside this run's report), or None."""
    if out.exists() and not out.is_dir():
        return f"--output {out} is a file, not a directory"
    held = [name for name in RESULT_FILES if (out / name).exists()]
    if held:
        return f"--output {out} already holds a bench result ({', '.join(held)}): choose another directory"
    return None


def cpu_problem(args: Any, wanted: set[str]) -> str | None:
    """The first reason the quick or full profile cannot measure ``wanted`` with ``args``, or None."""
    hint = "run `make export` (or `make demo`) first"
    problem = None
    if wanted & USES_CLASSIFIER:
        problem = entry_problem(args.repository, args.classifier, "classify", hint)
    if problem is None and wanted & SERVES_CLASSIFIER:
        problem = perf_analyzer_problem() or checkpoint_problem(
            args.checkpoints, args.classifier, "servers: the naive baseline serves it"
        )
    if problem is None and wanted & NEEDS_TRANSLATOR:
        problem = entry_problem(args.repository, args.translator, "translate", hint)
        problem = problem or checkpoint_problem(
            args.checkpoints, args.translator, "translation: its held-out sentences"
        )
    if problem is None and args.output is not None:
        problem = output_problem(args.output)
    return problem
