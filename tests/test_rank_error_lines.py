"""A trainer's error line reaches stderr in one write: the ranks of a torchrun share stderr, and
``print`` wrote a line's text and its newline apart, so two ranks refusing the same unused parameters
ran their lines into one (``... train in one processerror: ...``): the closing suite saw it."""

from __future__ import annotations

import io
import sys

from training.cli import run_trainer
from training.runtime import UnusedParameters


class _Writes(io.StringIO):
    """stderr as its writes, each kept apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)


def test_a_ranks_error_line_is_one_write_with_its_newline(monkeypatch) -> None:
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setenv("RANK", "1")

    def train():
        raise UnusedParameters("embedding_head.weight gets no gradient")

    assert run_trainer(train) == 2
    (line,) = [w for w in stderr.writes if "embedding_head" in w]
    assert line.endswith("\n") and line.count("\n") == 1, stderr.writes
