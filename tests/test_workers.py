"""Several gateway workers share one port: the sockets allow it and each worker gets the same flags."""

from __future__ import annotations

import sys
from pathlib import Path

from serving.workers import reuse_port_socket, worker_argv


def test_two_workers_can_listen_on_the_same_port():
    first = reuse_port_socket("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        second = reuse_port_socket("127.0.0.1", port)
        assert second.getsockname()[1] == port
        second.close()
    finally:
        first.close()


def test_a_worker_runs_the_same_flags_as_one_worker_sharing_its_ports():
    argv = ["--model-repository", "repo", "--workers", "2", "--http-port", "8000", "--workers=3"]
    assert worker_argv(argv) == [
        sys.executable,
        "-m",
        "serving",
        "--model-repository",
        "repo",
        "--http-port",
        "8000",
        "--workers",
        "1",
        "--reuse-port",
    ]


def test_each_worker_is_told_the_shared_board_and_its_place_on_it():
    argv = worker_argv(["--model-repository", "repo"], Path("/dev/shm/board"), 1)
    assert argv[-5:] == ["--reuse-port", "--worker-board", "/dev/shm/board", "--worker-index", "1"]


def test_the_command_line_reaches_the_sessions_and_the_board(tmp_path):
    from serving.__main__ import parse_args
    from serving.app import make_backend
    from serving.execution.occupancy import create_board
    from serving.execution.repository import Repository
    from serving.metrics import GatewayMetrics

    board = create_board(2)
    try:
        settings = parse_args(
            [
                "--model-repository",
                str(tmp_path),
                "--spin-us",
                "0",
                "--worker-board",
                str(board),
                "--worker-index",
                "1",
            ]
        )
        backend = make_backend(settings, Repository(tmp_path), GatewayMetrics())
        assert backend.options.spin_us == 0
        backend.occupancy.enter()
        assert board.read_bytes() == b"\x00\x01"  # this worker's run, published at its place
        backend.occupancy.leave()
        backend.occupancy.close()
    finally:
        board.unlink()
