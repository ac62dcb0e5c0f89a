"""The occupancy board: each gateway worker publishes its model runs in flight, and a run is alone only
when it is the one run of its process and no other worker runs anything."""

from __future__ import annotations

import pytest

from serving.execution.occupancy import Occupancy, create_board


@pytest.fixture
def board():
    path = create_board(3)
    yield path
    path.unlink()


def test_a_run_is_alone_while_no_other_worker_runs(board):
    workers = [Occupancy(board, i) for i in range(3)]
    first, second, _ = workers
    first.enter()
    assert first.alone()
    second.enter()
    assert not first.alone() and not second.alone()
    second.leave()
    assert first.alone()
    first.leave()
    for worker in workers:
        worker.close()


def test_two_runs_of_one_process_are_not_alone(board):
    mine = Occupancy(board, 0)
    mine.enter()
    mine.enter()
    assert not mine.alone()
    mine.leave()
    assert mine.alone()
    mine.leave()
    assert board.read_bytes() == bytes(3)  # nothing left counted once every run has ended
    mine.close()


def test_without_a_board_only_this_process_counts():
    mine = Occupancy()
    mine.enter()
    assert mine.alone()
    mine.enter()
    assert not mine.alone()


def test_a_worker_index_outside_the_board_is_refused(board):
    with pytest.raises(ValueError, match="outside the board"):
        Occupancy(board, 3)


def test_a_new_board_is_zeroed_and_sized_for_the_workers(board):
    assert board.read_bytes() == bytes(3)


def test_a_board_falls_back_to_the_temporary_directory_without_shared_memory(monkeypatch, tmp_path):
    import tempfile

    real = tempfile.mkstemp

    def no_shm(prefix="", dir=None):  # noqa: A002 - mkstemp's own keyword
        if dir == "/dev/shm":
            raise PermissionError("read-only /dev/shm")
        return real(prefix=prefix, dir=tmp_path)

    monkeypatch.setattr(tempfile, "mkstemp", no_shm)
    path = create_board(2)
    assert path.parent == tmp_path and path.read_bytes() == bytes(2)


def test_idle_means_no_run_here_nor_in_any_worker(board):
    mine, other = Occupancy(board, 0), Occupancy(board, 1)
    assert mine.idle()
    other.enter()
    assert not mine.idle()
    other.leave()
    mine.enter()
    assert not mine.idle()
    mine.leave()
    assert mine.idle()
    for worker in (mine, other):
        worker.close()
