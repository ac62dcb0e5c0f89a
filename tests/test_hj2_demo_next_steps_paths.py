"""The demo's last line names the ``make serve`` command that serves its repository: pasted into a shell,
it serves that very directory whatever its path holds. make reads ``$`` in a variable's value as its own
(``REPOSITORY='runs/$HOME b'`` served ``runs/OME b``), a backtick in the path ended the line's `...` span
early, and a path starting with ``~`` or a blank was read as another (the home directory; make drops a
leading blank)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from kiln import demo
from serving.__main__ import parse_args
from tests.test_makefile_targets import dry_run

PATHS = [
    "runs/a$HOME b",
    "runs/$(CHECKPOINTS)/r",
    "runs/a`id`b",
    "r``s",
    "runs/ré €\"q'$$x`",
    "~/r",
    "~",
    " lead",
]


def pasted_command(line: str) -> list[str]:
    """The words a shell makes of the line's first code span, read as Markdown reads one: from a run of
    backticks to the next run of as many, one space each side dropped."""
    opened = re.match(r"Next: (`+)", line)
    assert opened is not None, line
    fence = opened.group(1)
    closed = re.compile(rf"(?<!`){fence}(?!`)").search(line, opened.end())
    assert closed is not None, line
    span = line[opened.end() : closed.start()]
    if span.startswith(" ") and span.endswith(" ") and span.strip():
        span = span[1:-1]
    assert line[closed.end() :].startswith(" serves these models"), line
    return shlex.split(span)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("repository", [Path(p) for p in PATHS], ids=PATHS)
def test_the_make_serve_line_serves_the_demos_repository_whatever_its_path_holds(
    tmp_path, monkeypatch, repository
):
    for name in ("KILN_MODEL_REPOSITORY", "REPOSITORY", "BACKEND", "KILN_BACKEND", "HTTP_PORT", "GRPC_PORT"):
        monkeypatch.delenv(name, raising=False)
    words = pasted_command(demo.next_steps(repository, False))
    assert words[:2] == ["make", "serve"]
    served = dry_run(tmp_path, "serve", *words[2:])
    assert parse_args(served[served.index("-m") + 2 :]).model_repository == repository
