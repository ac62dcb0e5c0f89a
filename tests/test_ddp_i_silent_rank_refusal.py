"""A refusal that a torchrun rank other than 0 raises outside its training loop (a node without the
``--resume`` file: each rank reads it before the ranks meet) was said nowhere: only rank 0 prints such
errors, so that every rank refusing alike makes one line, and rank 1 exited 2 in silence; torchrun
stopped rank 0 and its failure summary read "exitcode: 2 ... To enable traceback see ...". Now the rank
writes its line into its torchrun error file (``TORCHELASTIC_ERROR_FILE``), which that summary shows;
stderr keeps rank 0's one line."""

from __future__ import annotations

import json

import pytest

from training.cli import run_trainer

MISSING = "--resume out/a.pt: no resume state at out/a.resume.pt"


def as_rank(monkeypatch, tmp_path, rank: int, local_rank: int, world_size: int):  # noqa: ANN001, ANN201
    """This process as ``rank`` (``local_rank`` on its node) of a torchrun of ``world_size``; the path
    of its error file."""
    for name, value in {
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
    }.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    return path


@pytest.fixture
def rank_1(monkeypatch, tmp_path):
    """This process as rank 1 of a two-process torchrun; the path of its error file."""
    return as_rank(monkeypatch, tmp_path, 1, 1, 2)


def summary_line(path) -> str:
    """What torchrun's failure summary shows for the rank (ProcessFailure reads these fields)."""
    message = json.loads(path.read_text(encoding="utf-8"))["message"]
    int(message["extraInfo"]["timestamp"])  # torchrun parses it
    return message["extraInfo"]["py_callstack"]


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (FileNotFoundError(MISSING), 2, f"error (rank 1): {MISSING}"),
        (ValueError("--epochs 2 is fewer"), 2, "error (rank 1): --epochs 2 is fewer"),
        (OSError(28, "No space left on device"), 1, "error (rank 1): [Errno 28] No space left on device"),
        (KeyboardInterrupt(), 130, "interrupted (rank 1)"),
    ],
)
def test_a_rank_that_does_not_print_its_error_leaves_it_for_torchruns_summary(
    rank_1, capsys, error, status, line
):
    def train():
        raise error

    assert run_trainer(train) == status
    assert capsys.readouterr().err == ""  # rank 0 says a refusal every rank makes: one line
    assert summary_line(rank_1) == line


def test_rank_0_prints_its_error_and_leaves_torchruns_text(rank_1, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")

    def train():
        raise FileNotFoundError(MISSING)

    assert run_trainer(train) == 2
    assert capsys.readouterr().err == f"error: {MISSING}\n"
    assert not rank_1.exists()


def test_outside_torchrun_nothing_is_written(rank_1, monkeypatch, capsys):
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")

    def train():
        raise ValueError("refused")

    assert run_trainer(train) == 2  # rank 1 of a run torchrun did not start: nowhere to write it
    assert not rank_1.exists()
