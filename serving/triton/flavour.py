"""Derive the CPU "python flavour" of a model repository for the Triton server shipped in nvidia-pytriton.

That server has only the python backend, so every ``onnxruntime_onnx`` entry becomes a python-backend
model whose ``model.py`` (:mod:`serving.triton.onnx_model`) runs ONNX Runtime on the same ``model.onnx``,
with identical inputs, outputs, ``max_batch_size`` and ``dynamic_batching`` (DESIGN.md contract 2).
Python entries (translators) are copied as they are, with the flavour's intra-op thread count; entries
no CPU can run (TensorRT) are skipped. The entries' large files (ONNX graphs and their external data)
are hard links to the repository's where the file system allows one, so a flavour costs its configs and
code, not a second copy of every model (see :func:`_link_or_copy`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

log = logging.getLogger(__name__)

ONNX_PLATFORMS = ("onnxruntime_onnx", "onnxruntime")
MODEL_TEMPLATE = Path(__file__).with_name("onnx_model.py")


class FlavourWriteError(OSError):
    """The flavour could not be written (a full or read-only work directory); the partial flavour is
    removed. Its message is one line: a failed ``copytree`` lists every file it could not copy."""


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Report a failed copy or write into ``target`` as a :class:`FlavourWriteError` in one line."""
    try:
        yield
    except shutil.Error as exc:  # copytree's list of (source, destination, why), one a file
        failures = exc.args[0] if exc.args and isinstance(exc.args[0], list) else [("", "", str(exc))]
        more = f" (and {len(failures) - 1} more files)" if len(failures) > 1 else ""
        raise FlavourWriteError(f"cannot write {target}: {failures[0][-1]}{more}") from None
    except OSError as exc:
        raise FlavourWriteError(f"cannot write {target}: {exc}") from None


@dataclass
class FlavourReport:
    """What :func:`derive_python_flavour` did with each entry of the repository."""

    wrapped: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # entry -> reason


def _entries(repository: Path) -> list[Path]:
    """The model directories of ``repository``: hidden ones (an export's staging or swapped-out entry,
    ``.<entry>.tmp-*`` / ``.old-*``) are not models, and Triton would refuse to start on them."""
    return [p for p in repository.iterdir() if not p.name.startswith(".") and (p / "config.pbtxt").is_file()]


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse a config.pbtxt with Triton's ModelConfig proto; a broken file names itself in the error."""
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a valid Triton config.pbtxt: {error}") from None


def python_config(
    config: model_config_pb2.ModelConfig, *, threads: int = 1, instances: int | None = None
) -> model_config_pb2.ModelConfig:
    """The python-backend twin of an ONNX config: same tensors, batching and instances, on CPU.

    ``instances`` replaces every instance group's count (one CPU group of that count where the config
    has none), so a peer can be served at another layout, e.g. 2 instances x 1 thread against the
    export's 1 x 2; without it the export's instance groups stay as they are.
    """
    if instances is not None and instances < 1:
        raise ValueError(f"instances must be at least 1, not {instances}")
    wrapped = model_config_pb2.ModelConfig()
    wrapped.CopyFrom(config)
    wrapped.platform = ""
    wrapped.backend = "python"
    wrapped.default_model_filename = ""
    wrapped.ClearField("optimization")  # execution accelerators of the onnxruntime backend
    if instances is not None and not wrapped.instance_group:
        wrapped.instance_group.add()
    for group in wrapped.instance_group:
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
        del group.gpus[:]
        if instances is not None:
            group.count = instances
    wrapped.parameters["intra_op_num_threads"].string_value = str(threads)
    wrapped.parameters["onnx_file"].string_value = config.default_model_filename or "model.onnx"
    return wrapped


def derive_python_flavour(
    repository: Path, output: Path, *, threads: int = 1, instances: int | None = None
) -> FlavourReport:
    """Write the python flavour of ``repository`` into ``output`` (replacing what a previous run left);
    ``threads`` and ``instances`` set the layout of the ONNX entries (see :func:`python_config`), and
    ``threads`` that of the python entries' own sessions too."""
    repository, output = Path(repository), Path(output)
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} does not exist or is not a directory")
    if output.resolve() == repository.resolve():
        raise ValueError(f"the python flavour must go to another directory than {repository}")
    _clear_output(output)
    with _writing(output):
        output.mkdir(parents=True)
    try:
        return _derive(repository, output, threads, instances)
    except BaseException:  # no half-copied flavour left filling the disk (or for Triton to load)
        # a Ctrl-C mid-copy too: an entry copied without its config.pbtxt is not a flavour's entry, and
        # the next start on the same --workdir refused the directory as not written by Kiln
        shutil.rmtree(output, ignore_errors=True)
        raise


def _derive(repository: Path, output: Path, threads: int, instances: int | None) -> FlavourReport:
    report = FlavourReport()
    for entry in sorted(_entries(repository)):
        config = read_config(entry / "config.pbtxt")
        kind = config.platform or config.backend
        if kind in ONNX_PLATFORMS:
            _wrap_onnx_entry(entry, output / entry.name, config, threads, instances)
            report.wrapped.append(entry.name)
        elif kind == "python":
            _copy_python_entry(entry, output / entry.name, config, threads)
            report.copied.append(entry.name)
        else:
            report.skipped[entry.name] = f"platform {kind!r} cannot run on the CPU python flavour"
            log.warning("skipping %s: %s", entry.name, report.skipped[entry.name])
    if not report.wrapped and not report.copied:
        raise ValueError(f"{repository} holds no ONNX or python model entry to serve")
    return report


def _clear_output(output: Path) -> None:
    """Remove what a previous flavour left in ``output``; anything else there is refused, not deleted:
    ``--workdir .`` in a project would otherwise have replaced its exported ``model_repository``."""
    if not output.exists() and not output.is_symlink():
        return
    if not output.is_dir() or not _is_flavour(output):
        raise FileExistsError(
            f"{output} exists and is not a python flavour written by Kiln: remove it or choose another "
            "directory (the flavour replaces what is there)"
        )
    shutil.rmtree(output)


def _is_flavour(directory: Path) -> bool:
    """True for an empty directory or one holding only python-backend model directories: what a flavour
    writes, and never what an export writes (its encoders, decoders and classifiers are ONNX entries)."""
    return all(entry.is_dir() and _is_python_entry(entry) for entry in directory.iterdir())


def _is_python_entry(entry: Path) -> bool:
    try:
        return (entry / "config.pbtxt").is_file() and read_config(entry / "config.pbtxt").backend == "python"
    except (OSError, ValueError):
        return False


def _copy_python_entry(
    source: Path, target: Path, config: model_config_pb2.ModelConfig, threads: int
) -> None:
    """Copy a python entry as it is, but for ``threads``: a translator's ``<name>`` model runs its
    encoder and decoder in ONNX Runtime sessions of its own with that many intra-op threads."""
    _copy_entry(source, target)
    copied = model_config_pb2.ModelConfig()
    copied.CopyFrom(config)
    copied.parameters["intra_op_num_threads"].string_value = str(threads)
    with _writing(target):
        (target / "config.pbtxt").write_text(text_format.MessageToString(copied), encoding="utf-8")


def _wrap_onnx_entry(
    source: Path, target: Path, config: model_config_pb2.ModelConfig, threads: int, instances: int | None
) -> None:
    """Copy the entry's files and give every version directory the ONNX Runtime model.py."""
    # under the version directory, an absolute name too, as Triton joins it (RepositoryEntry.model_file)
    onnx_file = (config.default_model_filename or "model.onnx").lstrip("/")
    _copy_entry(source, target)
    versions = [d for d in target.iterdir() if d.is_dir() and d.name.isdigit()]
    if not any(_holds_model(d / onnx_file) for d in versions):
        raise FileNotFoundError(f"{source}: no version directory holds {onnx_file}")
    text = text_format.MessageToString(python_config(config, threads=threads, instances=instances))
    with _writing(target):
        for version in versions:
            if _holds_model(version / onnx_file):
                # a fresh file: one the entry had (a link, see _link_or_copy) is never written through
                (version / "model.py").unlink(missing_ok=True)
                shutil.copyfile(MODEL_TEMPLATE, version / "model.py")
        (target / "config.pbtxt").write_text(text, encoding="utf-8")


def _holds_model(path: Path) -> bool:
    """Whether ``path`` is an ONNX model file, or a directory holding the ``model.onnx`` that Triton's
    onnxruntime backend loads from it (beside its external weights; the gateway's backend reads it
    too, ``RepositoryEntry.model_file``)."""
    return path.is_file() or (path / "model.onnx").is_file()


def _copy_entry(source: Path, target: Path) -> None:
    """Copy an entry's files but its config (written afterwards) into ``target``, the large ones as
    hard links (:func:`_link_or_copy`); symbolic links (a Kubernetes volume's ``..data`` layout) are
    followed, as Triton follows them."""
    with _writing(target):
        shutil.copytree(
            source, target, ignore=shutil.ignore_patterns("config.pbtxt"), copy_function=_link_or_copy
        )
        make_writable(target)


LINK_MIN_BYTES = 64 * 1024  # ONNX graphs and their external data; code, configs and tokenizers copied


def _link_or_copy(source: str, target: str) -> str:
    """Hard-link a file of :data:`LINK_MIN_BYTES` or more, else copy it (a link refused too: another
    file system, a read-only mount, a file this user may not link, a file system without links).

    Every flavour copied every model file: a Triton start paid for the whole repository, twice its
    size on disk while it ran, and each bench run kept 94-379 MB of such copies. A link is safe
    because nothing writes through it: the flavour writes only new files (config.pbtxt, model.py) and
    never changes a linked file's mode (:func:`make_writable`), ONNX Runtime reads, and export
    replaces an entry by renaming a new directory in (``export.repository``), so a running Triton
    keeps reading the files it linked, which outlive the entry they came from."""
    if os.stat(source).st_size >= LINK_MIN_BYTES:
        with contextlib.suppress(OSError):
            # the file a symbolic link names, as the copy reads it: os.link(source) follows none on
            # Linux, and a relative link (a Hugging Face cache's ../../blobs/<sha>) dangled in the flavour
            os.link(os.path.realpath(source), target)
            return target
    return shutil.copy2(source, target)


def make_writable(tree: Path) -> None:
    """Give this user write access to a tree it copied, whatever the source's modes were.

    A copy keeps its source's permissions: from a repository or an install mounted read-only (a
    volume of read-only files, a ``chmod -R a-w`` export) it came out read-only too, and a non-root
    user could then write neither the config nor ``model.py`` into its own copy, nor remove it after
    (root writes anyway, so only a container's user met it). A hard-linked file (more than one link)
    is left as it is: its mode is the repository file's own, and the flavour never writes it, nor
    needs to, to remove it (its directory's mode decides that)."""
    for directory, _, files in os.walk(tree):
        _add_mode(Path(directory), stat.S_IRWXU)
        for name in files:
            path = Path(directory, name)
            if path.stat().st_nlink == 1:
                _add_mode(path, stat.S_IWUSR)


def _add_mode(path: Path, bits: int) -> None:
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) | bits)
