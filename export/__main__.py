"""``python -m export``: every checkpoint to ONNX (+TensorRT), parity-checked, as a Triton model repository."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from export.freeze import FreezeError
from export.parity import ParityError
from export.quantize import PRECISIONS
from export.repository import VERSION, RepositoryError, check_repository, parse_policy
from export.results import DEVICES, EntryResult, ExportOptions
from export.tensorrt import MODES, TensorRTError
from export.triton_config import CUDNN_ALGO_SEARCH_VALUES
from export.writer_lock import writer_lock
from kiln.cli import interactive, listed, log_handler, path_text
from training.models.registry import env_modules, import_modules

PROGRESS_COLUMNS = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())

# fp16 is what suits a GPU; fp32 stays in every set, as the reference each precision is checked against.
DEFAULT_PRECISIONS = {"cpu": ("fp32",), "gpu": ("fp32", "fp16")}
DEFAULTS = ExportOptions()  # the flags' defaults, defined once there


def _precisions(text: str) -> tuple[str, ...]:
    values = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in values if p not in PRECISIONS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(
            f"unknown precision(s) {unknown or text!r}; choose from {PRECISIONS}"
        )
    return values if "fp32" in values else ("fp32", *values)


def _version(text: str) -> str:
    if text != "next" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected a version number >= 1 or 'next', got {text!r}")
    return text if text == "next" else str(int(text))


NUMERIC_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("--int8-max-drop", float, "classifiers: max validation top-1 drop (points)"),
    ("--int8-min-agreement", float, "translators: min share token-identical to fp32"),
    ("--int8-max-bleu-drop", float, "translators: max BLEU drop"),
    ("--max-batch-size", int, "Triton max_batch_size"),
    ("--beam-sentences", int, "held-out sentences for beam parity"),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Freeze checkpoints, export them to ONNX (+TensorRT), prove parity, write a Triton repository.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        type=path_text,
        default=["checkpoints"],
        help="checkpoint files or directories (default: checkpoints)",
    )
    parser.add_argument(
        "--repository",
        type=path_text,
        default="model_repository",
        help="output model repository (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild entries even when they are up to date")
    parser.add_argument(
        "--precisions",
        type=_precisions,
        help="comma list of fp32,fp16,int8 (default: fp32 on cpu, fp32,fp16 on gpu); translators are "
        "built in fp32 and int8 only, an fp16 asked for is a skipped row of the summary",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the configs place the models: gpu = KIND_GPU, shape buckets, TensorRT accelerator (default: %(default)s)",
    )
    parser.add_argument(
        "--cudnn-conv-algo-search",
        choices=sorted(CUDNN_ALGO_SEARCH_VALUES),
        default=DEFAULTS.cudnn_conv_algo_search,
        help="gpu configs: cuDNN convolution algorithm search, run once per bucket at warm-up (default: %(default)s)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.cuda_graphs,
        help="gpu configs: ask the gateway to replay each bucket as a CUDA graph (measured on an H200: half "
        "the engine call at every bucket; a model whose graphs cannot be captured serves without them) "
        "(default: on)",
    )
    parser.add_argument(
        "--tensorrt",
        choices=MODES,
        default=DEFAULTS.tensorrt,
        help="build TensorRT engines (default: %(default)s)",
    )
    for flag, kind, text in NUMERIC_FLAGS:  # each default is ExportOptions' (DEFAULTS), by the flag's name
        default = getattr(DEFAULTS, flag.removeprefix("--").replace("-", "_"))
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default: %(default)s)")
    parser.add_argument(
        "--models-from",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, so that the models it registers can be rebuilt (repeatable; also "
        "KILN_MODELS_FROM, comma-separated): needed for a checkpoint of your own classifier, whose module "
        "export never imports by itself (importing runs its code; the refusal names the module)",
    )
    parser.add_argument(
        "--data-path",
        help="where the data the checkpoints were trained on is on this machine (a classifier's image "
        "dataset, a translator's corpus), when it is not at the path each checkpoint records: the parity "
        "checks and the int8 gates rebuild the run's own validation / test split from it (without it, "
        "from random inputs, with a warning, and entries checked so are checked again once it is given); it "
        "is every checkpoint's of this run, so export checkpoints "
        "trained on different data one at a time",
    )
    parser.add_argument(
        "--version",
        type=_version,
        help="the version directory to write, <entry>/N/, beside the entry's other versions, kept as they "
        "are (a rollout: version 1 serves while 2 is written); 'next': one above the highest present (or "
        "that one, where it is this checkpoint's already). Default: the version this checkpoint was "
        "exported as, where an entry holds one; else version 1, as ever, or once an entry holds other "
        "versions, the one last written. A version exported from another checkpoint is not written over "
        "without --replace-version",
    )
    parser.add_argument(
        "--replace-version",
        action="store_true",
        help="write over a version directory holding a model exported from another checkpoint",
    )
    parser.add_argument(
        "--version-policy",
        metavar="POLICY",
        help="the configs' version_policy: latest:N (the N highest versions), all, or specific:V[,V...] "
        "(default: the one the entry has, kept; latest:1, Triton's default, for a new entry: the newest "
        "version alone is served)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar on a terminal, no step lines elsewhere (a log, a pipe, TERM=dumb)",
    )
    args = parser.parse_args(argv)
    if args.precisions is None:
        args.precisions = DEFAULT_PRECISIONS[args.device]
    try:
        if args.version_policy is not None:
            parse_policy(args.version_policy)
    except ValueError as exc:
        parser.error(f"--version-policy: {exc}")
    if args.replace_version and args.version == "next":  # accepted, it did nothing: a flag that misleads
        parser.error(
            "--replace-version with --version next: next writes a new version (or this checkpoint's own "
            "again), never another checkpoint's; name the version to write over (--version N)"
        )
    return args


def export_options(args: argparse.Namespace) -> ExportOptions:
    """The options of ``args``: each ExportOptions field from the flag of the same name, when there is one."""
    given = {f.name: getattr(args, f.name) for f in fields(ExportOptions) if hasattr(args, f.name)}
    return ExportOptions(**given)


def summary_table(results: list[EntryResult]) -> Table:
    """entry, precision, largest abs diff (and its output), top-1 agreement, status; the reasons of
    skipped/rejected entries go in a caption, each distinct reason once."""
    table = Table(title="Kiln export")
    table.add_column("entry", no_wrap=True)
    versioned = any(r.version != VERSION for r in results)  # a column once another version is written
    if versioned:
        table.add_column("version")
    for column in ("precision", "max abs diff", "top-1 / beam agreement", "status"):
        table.add_column(column)
    notes: dict[str, list[str]] = {}
    for r in results:
        diffs = {k: v for k, v in r.max_abs_diff.items() if v is not None}
        worst = max(diffs, key=diffs.get, default=None)
        diff = f"{diffs[worst]:.2g} ({worst})" if worst else "-"
        agreement = "-" if r.top1_agreement is None else f"{100 * r.top1_agreement:.2f}%"
        table.add_row(r.entry, *([r.version] if versioned else []), r.precision, diff, agreement, r.status)
        if r.message:
            notes.setdefault(r.message, []).append(r.entry)
    if notes:
        table.caption = "\n".join(f"{', '.join(entries)}: {message}" for message, entries in notes.items())
    return table


@contextmanager
def shown_steps(
    console: Console, total: int, enabled: bool = True
) -> Iterator[tuple[Callable[[str], None], Callable[[], None]]]:
    """``(on_step, advance)`` for a run of ``total`` checkpoints: a bar on an interactive terminal, one
    plain line per step elsewhere (``[2/4] transformer: int8 gate``), so that a CI log or ``| tee``
    shows what minutes of work are doing; nothing when not ``enabled`` (``--no-progress``)."""
    if enabled and interactive(console):
        with Progress(*PROGRESS_COLUMNS, console=console) as progress:
            task = progress.add_task("export", total=total)
            yield (lambda text: progress.update(task, description=text)), (lambda: progress.advance(task))
        return
    done = 0

    def line(text: str) -> None:
        if enabled:
            console.print(f"[{done + 1}/{total}] {text}", markup=False, highlight=False, soft_wrap=True)

    def advance() -> None:
        nonlocal done
        done += 1

    yield line, advance


def train_first(paths: Sequence[str]) -> str:
    """The commands that write checkpoints where ``paths`` looked, for a run that found none."""
    where = paths[0] if len(paths) == 1 else "DIR"
    return (
        f"train some first (`make train`, or `python -m training.classify --output-dir {where}` / "
        f"`python -m training.translate --output-dir {where}`), or name checkpoint files or directories"
    )


def gpu_placement_note(device: str, providers: Sequence[str]) -> str | None:
    """For ``--device gpu`` where ONNX Runtime has no CUDA provider (``providers``): a line saying that a
    gateway here cannot load what this export writes. It writes KIND_GPU configs for a GPU host (no GPU
    is needed to export), over the repository's CPU entries, and ``make serve`` here then came up with
    every model failing to load, the export having said nothing."""
    if device != "gpu" or "CUDAExecutionProvider" in providers:
        return None
    return (
        "--device gpu: the configs place every model on a GPU (KIND_GPU), for a CUDA machine; ONNX Runtime "
        "here has no CUDA provider, so a gateway on this machine cannot load them (export with --device cpu, "
        "or into another --repository, to serve here)"
    )


def _checkpoints(paths: Sequence[str]) -> list[Path]:
    """``find_checkpoints``, a path that does not exist named with the commands that write checkpoints."""
    from export.pipeline import find_checkpoints

    try:
        return find_checkpoints(paths)
    except FileNotFoundError as exc:
        missing = next((Path(p) for p in paths if not Path(p).exists()), None)
        raise FileNotFoundError(f"{exc}: {missing_file_advice(missing) or train_first(paths)}") from None


def interrupted_runs(paths: Sequence[str]) -> str | None:
    """For directories that hold no checkpoint but resume states (``<name>.resume.pt``, written after
    every epoch; ``<name>.pt`` only once the run ends): the ``--resume`` that finishes those runs. The
    advice was to train some first, as if none had been."""
    states = sorted(f for p in paths if Path(p).is_dir() for f in Path(p).glob("*.resume.pt"))
    if not states:
        return None
    from export.entry_plan import read_task

    shown = listed([str(f) for f in states], 3)
    first = states[0].with_name(states[0].name.removesuffix(".resume.pt") + ".pt")
    trainer = "training.translate" if read_task(states[0]) == "translate" else "training.classify"
    return (
        f"only the resume states of runs that did not finish ({shown}): finish one with `python -m "
        f"{trainer} --resume {first}`, which writes its checkpoint there"
    )


def missing_file_advice(missing: Path | None) -> str | None:
    """For a checkpoint file named that does not exist (a typo, most often): the checkpoints its
    directory does hold, or the command that trains into that directory. The advice was
    ``--output-dir <the file's name>``, which trains into a new directory named like the file."""
    if missing is None or missing.suffix != ".pt":
        return None
    held = sorted(f.name for f in missing.parent.glob("*.pt") if not f.name.endswith(".resume.pt"))
    if held:
        return f"{missing.parent} holds {listed(held, 8)}"
    return train_first([str(missing.parent)])


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """A SIGTERM (timeout, docker stop, a scheduler) stops the export as Ctrl-C does: without, the
    process ended at once, its working directory of graphs left in TMPDIR and its lock file in the
    repository. The caller's handler is put back after, so ``main`` called in-process (a test, a
    script) leaves its signal handling as it was; off the main thread, where Python allows no handler,
    nothing is changed (a ValueError otherwise)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def removed_if_left_empty(repository: Path) -> Iterator[None]:
    """``repository`` and the parents of it that do not exist yet (``check_repository`` creates them)
    removed again where the block fails (a refusal, an error, Ctrl-C) and leaves them empty: a refused
    ``--repository newdir`` left an empty ``newdir/`` behind. A directory that existed before, or that
    holds anything (an entry, a refusal record, another process's file), is never removed."""
    made = []
    for directory in (repository, *repository.parents):  # deepest first
        if directory.name == "..":  # ``new/../repo``: ``new/..`` is none of its own (``new`` is)
            continue
        if _there(directory):
            break
        made.append(directory)
    try:
        yield
    except BaseException:
        for directory in made:
            try:
                directory.rmdir()  # an empty directory only
            except OSError:
                break
        raise


def _there(directory: Path) -> bool:
    """Whether ``directory`` exists (a link to nothing too), resolved as well: ``new/../../old`` does not
    (no ``new`` yet), yet names ``old``, which may; one that cannot be resolved (a link loop) counts."""
    try:
        return directory.exists() or directory.is_symlink() or directory.resolve().exists()
    except (OSError, RuntimeError):  # RuntimeError: Python 3.11's word for a link loop
        return True


def main(argv: Sequence[str] | None = None) -> int:
    with sigterm_as_ctrl_c():
        return run_export(argv)


def run_export(argv: Sequence[str] | None) -> int:
    """``main``'s work, a SIGTERM raising KeyboardInterrupt in it (``sigterm_as_ctrl_c``)."""
    from export.pipeline import check_entry_names, check_entry_plan, check_versions, export_checkpoint

    args = parse_args(argv)
    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(message)s",
        handlers=[log_handler(console, "%(levelname)s %(message)s", show_time=False)],
    )
    # torch.onnx warns once per export that torchvision's custom ops cannot be registered: Kiln has none.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    if args.device == "gpu":
        import onnxruntime

        note = gpu_placement_note(args.device, onnxruntime.get_available_providers())
        if note:
            console.print(note, style="yellow", markup=False, highlight=False, soft_wrap=True)
    results: list[EntryResult] = []
    try:
        options = export_options(args)
        import_modules([*env_modules(), *args.models_from])
        checkpoints = _checkpoints(args.paths)
        if not checkpoints:
            advice = interrupted_runs(args.paths) or train_first(args.paths)
            found = f"no checkpoints (*.pt) found in {' '.join(args.paths)}: {advice}"
            console.print(found, style="red", markup=False, highlight=False, soft_wrap=True)
            return 2
        check_entry_names(checkpoints)
        with removed_if_left_empty(Path(args.repository)):
            check_repository(Path(args.repository))
            with writer_lock(Path(args.repository)):
                check_entry_plan(checkpoints, Path(args.repository), options)
                check_versions(checkpoints, Path(args.repository), options)  # all refused before any written
                with shown_steps(console, len(checkpoints), args.progress) as (on_step, advance):
                    for ckpt in checkpoints:
                        results += export_checkpoint(
                            ckpt, args.repository, options, on_step=on_step, data_path=args.data_path
                        )
                        advance()
    except (FreezeError, ParityError, RepositoryError, TensorRTError, OSError, ValueError) as exc:
        # ValueError covers CheckpointError and bad options; OSError a file that vanished or a full disk;
        # FreezeError a model that cannot be frozen (a diverged checkpoint's NaN weights)
        if results:
            console.print(summary_table(results))
        console.print(f"export failed: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:  # entries are swapped in whole; the lock and staging are let go on the way
        console.print("interrupted", style="red", highlight=False)
        return 130
    Console().print(summary_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
