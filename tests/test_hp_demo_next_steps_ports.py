"""The demo's last line names a ``make serve`` command and the addresses it serves on, whatever the shell
keeps. ``make serve`` takes ``HTTP_PORT`` / ``GRPC_PORT`` / ``BACKEND`` from the environment as well as
from its command line (and passes them as flags, which win over ``KILN_*``): with ``BACKEND=triton`` or
``HTTP_PORT=9000`` exported the line's command waited for a Triton, or served on a port the line did not
name. A ``KILN_HTTP_PORT`` of 0 (a free port) or one the gateway refuses ("abc", "70000", "") was printed
as the URL (``http://127.0.0.1:abc``); ``KILN_GRPC_PORT=0`` (gRPC off) as ``gRPC 127.0.0.1:0``."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from kiln import demo
from serving.__main__ import parse_args
from tests.test_makefile_targets import dry_run

PORT_NAMES = ("HTTP_PORT", "GRPC_PORT", "BACKEND", "REPOSITORY")
KILN_NAMES = ("KILN_MODEL_REPOSITORY", "KILN_BACKEND", "KILN_HTTP_PORT", "KILN_GRPC_PORT")


def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **shell: str) -> tuple[str, object]:
    """The demo's last line with ``shell``'s variables exported, and the settings its command serves with."""
    for name in (*PORT_NAMES, *KILN_NAMES):
        monkeypatch.delenv(name, raising=False)
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    line = demo.next_steps(Path("model_repository"), False)
    command = re.search(r"`(make serve[^`]*)`", line)
    assert command is not None, line
    words = dry_run(tmp_path, "serve", *shlex.split(command.group(1))[2:], **shell)
    return line, parse_args(words[words.index("-m") + 2 :])  # the shell's KILN_* variables too


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_make_variables_the_shell_exports_are_overridden_or_named(tmp_path, monkeypatch):
    line, settings = served(tmp_path, monkeypatch, HTTP_PORT="9000", GRPC_PORT="9001", BACKEND="triton")
    assert settings.backend == "onnxruntime" and settings.model_repository == Path("model_repository")
    assert "http://127.0.0.1:9000 " in line and "gRPC 127.0.0.1:9001 " in line
    assert (settings.http_port, settings.grpc_port) == (9000, 9001)


@needs_make
@pytest.mark.parametrize("value", ["0", "abc", "70000", ""])
def test_an_http_port_no_client_can_reach_is_named_in_the_command(tmp_path, monkeypatch, value):
    line, settings = served(tmp_path, monkeypatch, KILN_HTTP_PORT=value)
    assert settings.http_port == 8000 and "http://127.0.0.1:8000 " in line, line


@needs_make
def test_grpc_turned_off_is_said_so(tmp_path, monkeypatch):
    line, settings = served(tmp_path, monkeypatch, KILN_GRPC_PORT="0")
    assert settings.grpc_port == 0
    assert "127.0.0.1:0" not in line and "gRPC off" in line, line
    assert "http://127.0.0.1:8000 " in line


def test_the_plain_line_is_unchanged(monkeypatch):
    for name in (*PORT_NAMES, *KILN_NAMES):
        monkeypatch.delenv(name, raising=False)
    assert demo.next_steps(Path("model_repository"), False).startswith(
        "Next: `make serve` serves these models until Ctrl-C on http://127.0.0.1:8000 and gRPC 127.0.0.1:8001 "
    )
