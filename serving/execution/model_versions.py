"""Model versions as Triton names them: the version directories an entry serves under its
``version_policy``, and the version a request asks for.

Only plain numbers name versions (``01`` or ``v2`` is no version directory), and a requested version
is read as the number Triton reads (``01`` is version 1), so a model has the same versions from the
gateway as from Triton.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from serving.errors import BadRequest
from serving.execution.version_policy import is_version_name, policy_versions

log = logging.getLogger("serving.execution.repository")  # the reader's log, whichever part writes it


def select_versions(directory: Path, config: model_config_pb2.ModelConfig) -> list[str]:
    """Version directories filtered by the config's version_policy (default: latest 1). As Triton,
    only plain numbers name versions (``01`` or ``v2`` is ignored, with a warning: ``01`` would be
    version 1 at a path that does not exist); why an entry is left with none is
    :func:`serving.execution.repository.version_problem`'s to say."""
    found, ignored = [], []
    broken = dangling_versions(directory)
    if broken:
        log.warning(
            "model %s: version directories %s in %s are links to nothing (%s): not served",
            directory.name,
            [link.name for link in broken],
            directory,
            "; ".join(link_target(link) for link in broken),
        )
    for path in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_version(path):
            if any(path.iterdir()):
                found.append(int(path.name))
        else:
            ignored.append(path.name)
    found.sort()
    if ignored:
        log.warning(
            "model %s: directories %s in %s are not version numbers (plain digits, no leading zero): ignored",
            directory.name,
            ignored,
            directory,
        )
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    # the rule Triton's python translator model applies too (it has no tritonclient to read the config)
    chosen = policy_versions(found, kind, policy.latest.num_versions, policy.specific.versions)
    if kind == "specific":
        missing = sorted(set(policy.specific.versions) - set(found))
        if missing:
            log.warning(
                "model %s: version_policy specific names versions %s that have no directory holding "
                "files in %s: not served",
                directory.name,
                missing,
                directory,
            )
    return [str(v) for v in chosen]


def dangling_links(directory: Path) -> list[Path]:
    """The links in ``directory`` that lead nowhere (their target is gone, not mounted, or a loop):
    a listing of directories passes them over without a word, so the model or version a user sees in
    ``ls`` went unserved with no line saying why."""
    return sorted(
        p for p in directory.iterdir() if not p.name.startswith(".") and p.is_symlink() and not p.exists()
    )


def dangling_versions(directory: Path) -> list[Path]:
    """The links named as versions in an entry's ``directory`` that lead nowhere (not served)."""
    return [link for link in dangling_links(directory) if is_version_name(link.name)]


def link_target(link: Path) -> str:
    """``link -> target`` for a log line, the target as the link holds it."""
    try:
        return f"{link.name} -> {os.readlink(link)}"
    except OSError as exc:
        return f"{link.name}: {exc.strerror}"


def is_version(path: Path) -> bool:
    """A version directory: plain digits, no leading zero (as Triton reads them)."""
    return path.is_dir() and is_version_name(path.name)


MAX_VERSION = 2**63 - 1  # Triton's versions are int64: a larger number is a 400 there, never a version


def parse_version(version: str) -> str:
    """A requested version (an HTTP path segment, a gRPC ``version`` field) in the form versions are
    listed in: digits only, read as the number Triton reads (``01`` is version 1, ``00`` version 0,
    which no model has); anything else, or a number past int64, is a 400."""
    if not version:
        return version
    number = version.lstrip("0") or "0"  # a bounded length before int(): Python refuses 4 301 digits
    if not (number.isascii() and number.isdigit()) or len(number) > 19 or int(number) > MAX_VERSION:
        raise BadRequest(
            f"model version must be a positive integer, at most {MAX_VERSION}, got {version[:40]!r}"
        )
    return number


C_SPACE = " \t\n\v\f\r"  # what C's isspace() takes: std::stol skips it before a number


def parse_grpc_version(version: str) -> str:
    """A ``version`` / ``model_version`` field of a gRPC request, read as Triton's gRPC front end reads
    it (``std::stol``): white space around the number and a ``+`` sign are taken (`` 1``, ``+1``, a
    ``1`` and a newline are version 1 there, a 400 here before), then as :func:`parse_version`. Its HTTP routes take
    digits alone (``/versions/([0-9]+)``), as :func:`parse_version` does. Unlike stol, a number followed
    by anything else stays a 400 (Triton reads ``1.5`` or ``1abc`` as version 1: another model than
    the client may have meant, answered without a word)."""
    number = version.strip(C_SPACE)
    number = number[1:] if number.startswith("+") else number
    if number.isascii() and number.isdigit():
        with contextlib.suppress(BadRequest):  # past int64: refused below, naming what was sent
            return parse_version(number)
    return parse_version(version)  # "" (the latest), or refused naming what was sent
