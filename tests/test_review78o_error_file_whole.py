"""A rank's line in its torchrun error file (``training.cli._tell_torchrun``) is written whole or not at
all: torchrun's agent parses the file wherever it exists, and one cut short (the rank was refusing a
full disk, and its error file lives on a disk too) stopped the agent in a ``JSONDecodeError`` traceback
instead of its failure summary, the run's other ranks left to the agent's own exit."""

from __future__ import annotations

import errno
import json

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

import training.cli as cli
from tests.test_ddp_i_silent_rank_refusal import as_rank
from training.cli import run_trainer

FULL = OSError(errno.ENOSPC, "No space left on device")


class _FillsUp:
    """A file whose disk fills after ``room`` bytes: what fits is written, then ENOSPC."""

    def __init__(self, real, room: int) -> None:  # noqa: ANN001
        self.real, self.room = real, room

    def write(self, text: str) -> int:
        self.real.write(text[: self.room])
        self.real.flush()
        if len(text) > self.room:
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(text)
        return len(text)

    def __enter__(self):  # noqa: ANN204
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.real.close()


@pytest.fixture
def rank_2(monkeypatch, tmp_path):
    """This process as rank 2 (the second on its node) of four; the path of its error file."""
    return as_rank(monkeypatch, tmp_path, 2, 1, 4)


def test_an_error_file_the_disk_cuts_short_is_not_left_for_torchrun_to_choke_on(rank_2, monkeypatch, capsys):
    real_open = open
    monkeypatch.setattr(cli, "open", lambda *a, **k: _FillsUp(real_open(*a, **k), 20), raising=False)

    def train():
        raise FULL

    assert run_trainer(train) == 1
    assert capsys.readouterr().err == ""  # a node's second rank: its line is for torchrun's summary
    failure = ProcessFailure(local_rank=1, pid=1, exitcode=1, error_file=str(rank_2))  # no JSONDecodeError
    assert "To enable traceback" in failure.message  # torchrun's own text, as where nothing was written
    assert list(rank_2.parent.iterdir()) == []  # nor a partial file left beside it


def test_the_line_written_whole_is_what_torchrun_shows(rank_2, monkeypatch) -> None:
    def train():
        raise FULL

    assert run_trainer(train) == 1
    failure = ProcessFailure(local_rank=1, pid=1, exitcode=1, error_file=str(rank_2))
    assert (
        failure.message["extraInfo"]["py_callstack"] == "error (rank 2): [Errno 28] No space left on device"
    )
    assert [p.name for p in rank_2.parent.iterdir()] == ["error.json"]
    json.loads(rank_2.read_text(encoding="utf-8"))
