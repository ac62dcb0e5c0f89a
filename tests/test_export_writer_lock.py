"""One export writes a repository at a time: a second export, in another process or thread, waits for the
first (saying whose export it waits for) and then does its work; a holder that dies releases the lock,
and one that finishes removes the lock file (a waiter holding the removed file's lock tries again)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from export.pipeline import export_checkpoint
from export.writer_lock import LOCK_NAME, writer_lock
from kiln.lock_files import still_named
from tests.repo_fixtures import MAX_BATCH, _tiny_checkpoint
from tests.waiting import DEADLINE_S

HOLDER = """
import sys
from pathlib import Path
from export.writer_lock import writer_lock
with writer_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


class _Waits(logging.Handler):
    """Sets ``seen`` when the lock says an export waits for another."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting for it to finish" in record.getMessage():
            self.messages.append(record.getMessage())
            self.seen.set()


@pytest.fixture
def waits() -> Iterator[_Waits]:
    handler = _Waits()
    logger = logging.getLogger("export.writer_lock")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _holder(repo: Path) -> subprocess.Popen:
    """A process holding ``repo``'s lock until its stdin closes (returned once it holds it)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(repo)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout.readline() == "held\n"
    return proc


@pytest.mark.parametrize("ends", ["finishes", "is killed"])
def test_an_export_waits_while_another_process_writes_the_repository_and_runs_once_it_ends(
    tmp_path: Path, waits: _Waits, ends: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    ckpt = _tiny_checkpoint(tmp_path / "ckpt" / "lenet.pt", "lenet", seed=0)
    holder = _holder(repo)
    results: list = []
    worker = threading.Thread(
        target=lambda: results.append(export_checkpoint(ckpt, repo, max_batch_size=MAX_BATCH, tensorrt="off"))
    )
    try:
        worker.start()
        assert waits.seen.wait(DEADLINE_S), "the second export never said it was waiting"
        assert f"pid {holder.pid} on " in waits.messages[0]
        assert not (repo / "lenet").exists() and worker.is_alive()
    finally:
        if ends == "is killed":
            holder.send_signal(signal.SIGKILL)
        holder.stdin.close()
        holder.wait(DEADLINE_S)
        worker.join(DEADLINE_S)
    assert not worker.is_alive()
    assert {r.entry: r.status for r in results[0]}["lenet"] == "written"
    assert (repo / "lenet" / "kiln.json").is_file()
    assert not (repo / LOCK_NAME).exists()  # a repository at rest holds no lock file


def test_the_lock_is_reentrant_in_one_thread_and_other_threads_take_turns(
    tmp_path: Path, waits: _Waits
) -> None:
    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait(DEADLINE_S)
        with writer_lock(tmp_path):
            order.append("second in")

    other = threading.Thread(target=second)
    other.start()
    with writer_lock(tmp_path), writer_lock(tmp_path):  # export_all holds it across export_checkpoint
        inside.set()
        other.join(0.2)  # a chance to get in, which it must not take
        order.append("first out")
    other.join(DEADLINE_S)
    assert order == ["first out", "second in"]
    assert not waits.seen.is_set()  # threads of one process wait in turn, not on the file


def test_a_lock_file_removed_by_its_last_holder_is_not_taken_for_the_lock(tmp_path: Path) -> None:
    """A waiter wins the flock of the file its holder removed as it let go; held, that file would leave
    the path free for a third export to lock a new file beside it: the waiter must see it is stale."""
    path = tmp_path / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert still_named(fd, path)
        path.unlink()
        assert not still_named(fd, path)
        path.touch()  # the next export's new file
        assert not still_named(fd, path)
    finally:
        os.close(fd)
    with writer_lock(tmp_path):
        assert path.exists() and "pid" in path.read_text()
    assert not path.exists()
