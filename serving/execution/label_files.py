"""An entry's labels files, read as Triton's ``LabelProvider`` reads them, and what is warned about in them.

An output's ``label_filename`` (config.pbtxt), or else kiln.json's ``labels``, names the classes the
gateway answers with. Each file is read a line a label, as Triton reads it, so a class has the same
name from the gateway as from Triton; what is served otherwise than a reader of the file would guess
(a blank line, a Windows line end, stray bytes, fewer or more lines than classes) is logged.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2

log = logging.getLogger("serving.execution.repository")  # the reader's log, whichever part writes it


def entry_labels(
    directory: Path, config: model_config_pb2.ModelConfig, kiln: dict[str, Any]
) -> dict[str, list[str]]:
    """Each output's labels: its ``label_filename`` (a file Triton cannot read fails the load, as it
    fails Triton's), else kiln.json's ``labels`` file for every output (Triton never reads it, so one
    the gateway cannot read only leaves the classes unnamed, with a warning)."""
    labels = {}
    for output in config.output:
        if output.label_filename:
            labels[output.name] = _read_labels(directory, output.label_filename, f"output {output.name!r}")
            _check_label_count(directory, output.label_filename, labels[output.name], [output])
    named = kiln.get("labels")
    if labels or not isinstance(named, str):
        return labels
    if not _label_path(directory, named).is_file():  # a hand-edited kiln.json, or its file removed
        log.warning(
            "model %s: kiln.json names labels file %r, which is not a file in %s: its classes are answered "
            "by index",
            directory.name,
            named,
            directory,
        )
        return labels
    try:
        shared = _read_labels(directory, named, "kiln.json")
    except ValueError as exc:
        log.warning("model %s: %s: its classes are answered by index", directory.name, exc)
        return labels
    _check_label_count(directory, named, shared, list(config.output))
    return {output.name: shared for output in config.output}


def _label_path(directory: Path, filename: str) -> Path:
    """Where Triton finds a labels file: joined under the model directory, even an absolute name (so
    ``/etc/hostname`` is the model directory's ``etc/hostname``); ``..`` and links are followed, as
    Triton 2.51 follows them (it loads a model whose labels are ``../other/labels.txt``)."""
    return directory / filename.lstrip("/")


def _read_labels(directory: Path, filename: str, owner: str) -> list[str]:
    """A labels file as Triton's ``LabelProvider`` reads it: a label per line, lines ended by line
    feeds alone, each kept as written (a blank line is a class without a name and keeps its index; a
    carriage return, U+2028 or U+0085 stays inside its label), so the gateway names each class as
    Triton does; what is served otherwise than its writer likely meant is logged."""
    path = _label_path(directory, filename)
    try:
        data = _regular_file_bytes(path)
    except OSError as exc:
        raise ValueError(f"label file {str(path)!r} for {owner} cannot be read: {exc.strerror}") from None
    text = data.decode("utf-8", errors="replace")
    labels = text.split("\n")
    if labels[-1] == "":  # the last line's \n ends it; it starts no label
        labels.pop()
    notes = _label_notes(labels, data)
    if notes:
        log.warning(
            "model %s: %s, read a line a label as Triton reads it: %s", directory.name, path, "; ".join(notes)
        )
    return labels


def _regular_file_bytes(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file (a link to one too): a named pipe there
    (``mkfifo``, or a label_filename of ``../../dev/...``) hung the gateway's start-up for good, waiting
    for a writer, and a device such as /dev/zero read until memory ran out. Opened without blocking,
    then checked, so a pipe is refused rather than waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file (a pipe, a device or a socket)")
        return file.read()


def _label_notes(labels: list[str], data: bytes) -> list[str]:
    """What in a labels file is served otherwise than a reader of the file would guess."""
    notes = []
    blank = [i for i, label in enumerate(labels) if not label]
    if blank:
        notes.append(f"the lines of classes {_few(blank)} are blank: those classes have no name")
    returns = [i for i, label in enumerate(labels) if label.endswith("\r")]
    if returns:
        notes.append(
            f"the labels of classes {_few(returns)} end in a carriage return (Windows line ends), "
            "which stays in the label: save the file with \\n line ends"
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        bad = [i for i, label in enumerate(labels) if "\ufffd" in label]
        notes.append(
            f"the labels of classes {_few(bad)} are not UTF-8: their stray bytes are served as U+FFFD"
        )
    return notes


def _few(indices: list[int], shown: int = 5) -> str:
    """``indices`` for a log line: the first few and a count."""
    listed = ", ".join(map(str, indices[:shown]))
    return listed if len(indices) <= shown else f"{listed} and {len(indices) - shown} more"


def _check_label_count(directory: Path, filename: str, labels: list[str], outputs: list[Any]) -> None:
    """Warn once when a labels file's lines do not number an output's classes (its last fixed dim):
    the classes past the file are answered by index, and ``GET /v1/models`` counts the lines."""
    classes = sorted({int(o.dims[-1]) for o in outputs if o.dims and o.dims[-1] > 0})
    if classes and len(labels) not in classes:
        log.warning(
            "model %s: %s holds %d labels (a line each, blank ones included, as Triton reads it) but "
            "output %s has %s classes: classes past the file are answered by index, labels past the "
            "classes are unused",
            directory.name,
            directory / filename,
            len(labels),
            ", ".join(repr(o.name) for o in outputs if o.dims and o.dims[-1] > 0),
            " or ".join(map(str, classes)),
        )
