"""The demo's last line names the ``make serve`` command that serves what the demo served. The demo
gives its gateway its repository and backend as flags, so ``KILN_*`` variables left in the shell do
not reach it; ``make serve`` passes a variable as a flag only when it is given to make, so the same
variables apply there: ``KILN_MODEL_REPOSITORY`` or ``KILN_BACKEND=triton`` in the shell made the
line's plain ``make serve`` serve another repository, or wait for a Triton, not "these models"."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from kiln import demo
from serving.__main__ import parse_args
from tests.test_makefile_targets import dry_run


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_serve_on_the_last_line_serves_the_demos_repository_on_onnxruntime_whatever_the_shell_keeps(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("KILN_MODEL_REPOSITORY", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("KILN_BACKEND", "triton")
    monkeypatch.setenv("KILN_HTTP_PORT", "9000")
    monkeypatch.setenv("KILN_GRPC_PORT", "9001")
    line = demo.next_steps(Path("model_repository"), False)
    command = re.search(r"`(make serve[^`]*)`", line)
    assert command is not None, line
    env = {k: os.environ[k] for k in ("KILN_MODEL_REPOSITORY", "KILN_BACKEND", "KILN_HTTP_PORT")}
    words = dry_run(tmp_path, "serve", *shlex.split(command.group(1))[2:], **env)
    settings = parse_args(words[words.index("-m") + 2 :])  # with the shell's KILN_* variables
    assert settings.model_repository == Path("model_repository")
    assert settings.backend == "onnxruntime"
    assert f"http://127.0.0.1:{settings.http_port} " in line and f"127.0.0.1:{settings.grpc_port} " in line


def test_a_shell_without_kiln_variables_keeps_the_plain_command(monkeypatch):
    for name in ("KILN_MODEL_REPOSITORY", "KILN_BACKEND", "KILN_HTTP_PORT", "KILN_GRPC_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KILN_BACKEND", "onnxruntime")
    assert demo.next_steps(Path("model_repository"), False).startswith(
        "Next: `make serve` serves these models until Ctrl-C on http://127.0.0.1:8000 and gRPC 127.0.0.1:8001 "
    )
