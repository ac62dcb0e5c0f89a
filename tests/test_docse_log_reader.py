"""docs/deploy.md's command for reading the gateway's JSON logs by hand reads every line a pod writes.

The gateway's log is JSON lines with plain-text lines among them (ONNX Runtime's own warnings, grpc core's,
a refused start's one line: docs/deploy.md, "Logs"). ``jq -r`` on that stream stopped at the first plain
line ("parse error: Invalid numeric literal", exit 4) and printed nothing after it.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from serving.log_json import JsonLine

DEPLOY_MD = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
PLAIN = "2026-12-07 06:40:39.120 [W:onnxruntime:, graph.cc:4285 CleanUnusedInitializers] Removing initializer"


def documented_reader() -> str:
    """The pipeline after ``kubectl logs deploy/kiln-gateway |`` in docs/deploy.md."""
    (line,) = re.findall(r"^kubectl logs deploy/kiln-gateway \| (.+)$", DEPLOY_MD.read_text(), re.M)
    return line


def json_line(name: str, message: str) -> str:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)
    return JsonLine(logging.Formatter()).format(record)


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_the_documented_log_reader_prints_json_and_plain_lines_alike() -> None:
    first, last = json_line("serving.app", "first"), json_line("serving.gateway", "last")
    logs = "\n".join([first, PLAIN, "200", last]) + "\n"
    done = subprocess.run(
        ["bash", "-c", documented_reader()], input=logs, capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    assert re.fullmatch(r"\S+Z WARNING \[\d+\] serving\.app: first", lines[0]), lines[0]
    assert lines[1:3] == [PLAIN, "200"]
    assert lines[3].endswith(" serving.gateway: last"), lines[3]
