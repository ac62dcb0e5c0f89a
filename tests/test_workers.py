"""Several gateway workers share one port: the sockets allow it and each worker gets the same flags."""

from __future__ import annotations

import sys

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
