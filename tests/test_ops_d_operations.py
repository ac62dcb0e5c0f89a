"""Operating ``python -m serving``: what an operator's flags and signals get (start-up, workers, stops)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


def test_a_worker_count_too_large_for_the_machine_stops_in_one_line_leaving_nothing(tmp_path, monkeypatch):
    # --workers 100000 (a typo for 10) ended in a MemoryError traceback from bytes(size) of the
    # connections board (80 GB); a count past sys.maxsize in an OverflowError from the occupancy one
    import serving.workers as workers

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(workers, "sweep_stale", lambda: [])
    count = 10**20
    with pytest.raises(SystemExit) as stopped:
        workers.run_workers(["--model-repository", str(tmp_path)], count)
    line = str(stopped.value.code)
    assert line.startswith(f"--workers {count}: cannot make the files the workers share: no room for ")
    assert "\n" not in line and "No space left on device" in line and " KiB free)" in line
    assert list(tmp_path.iterdir()) == []
    mine = f"-{os.getpid()}-"
    assert not [p for p in Path("/dev/shm").glob("kiln-*") if mine in p.name]


def test_a_board_larger_than_one_chunk_of_zeros_is_written_whole(tmp_path, monkeypatch):
    from serving.execution import occupancy

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    size = 2 * occupancy._ZEROS_CHUNK + 3
    board = occupancy._write_zeros("kiln-test-", size, str(tmp_path))
    try:
        data = board.read_bytes()
        assert len(data) == size and not any(data)
    finally:
        board.unlink()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_metrics_directory_that_is_no_directory_stops_in_one_line(tmp_path, kind, workers):
    # PROMETHEUS_MULTIPROC_DIR naming no directory ended in prometheus_client's FileNotFoundError (or
    # NotADirectoryError) traceback as the app was made, in each worker of --workers
    from serving.triton.ports import free_port

    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\n')
    metrics = tmp_path / "metrics"
    if kind == "file":
        metrics.write_text("")
    command = [sys.executable, "-m", "serving", "--model-repository", str(tmp_path / "repo")]
    command += ["--http-port", str(free_port()), "--grpc-port", "0", "--workers", workers]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    problem = "does not exist" if kind == "missing" else "is not a directory"
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"PROMETHEUS_MULTIPROC_DIR {metrics} {problem}: " + (
        "the gateway's processes share their metrics there; make it a writable directory, or unset it "
        "(--workers then makes one of its own)\n"
    )


SECONDS_FLAGS = (
    "--shutdown-grace-s",
    "--request-timeout-s",
    "--retry-after-s",
    "--read-timeout-s",
    "--send-timeout-s",
    "--decode-release-idle-s",
    "--batch-release-idle-s",
)


@pytest.mark.parametrize("flag", SECONDS_FLAGS)
@pytest.mark.parametrize("value", ["inf", "1e300"])
def test_seconds_no_thread_can_wait_are_a_usage_error_naming_the_flag(flag, value, capsys):
    # --shutdown-grace-s inf was taken, and the stop then failed: "stopping the backend failed
    # (timestamp out of range for platform time_t)", a traceback and "Application shutdown failed"
    from serving.__main__ import parse_args

    with pytest.raises(SystemExit) as stopped:
        parse_args(["--model-repository", "repo", flag, value])
    assert stopped.value.code == 2
    variable = "KILN_" + flag[2:].replace("-", "_").upper()
    assert f"error: {flag} (or {variable}): " in capsys.readouterr().err


@pytest.mark.parametrize("flag", SECONDS_FLAGS)
def test_seconds_a_thread_can_wait_are_taken(flag):
    from serving.__main__ import parse_args

    name = flag[2:].replace("-", "_")
    assert getattr(parse_args(["--model-repository", "repo", flag, "9e9"]), name) == 9e9


def test_the_largest_grace_a_setting_takes_is_one_a_thread_can_join():
    import threading

    from serving.__main__ import parse_args

    grace = parse_args(["--model-repository", "repo", "--shutdown-grace-s", "9e9"]).shutdown_grace_s
    worker = threading.Thread(target=lambda: None)
    worker.start()
    worker.join(grace)  # what a batcher's stop does with it
    assert not worker.is_alive()


def test_a_ctrl_c_before_the_server_handles_signals_exits_zero_without_a_traceback(tmp_path):
    # Ctrl-C while a gateway (each worker of --workers) still imported its app ended in a
    # KeyboardInterrupt traceback per process; a Ctrl-C a moment later, while the models load, exits 0
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\n')
    script = (
        "import os, signal, sys\n"
        "import serving.__main__ as gateway\n"
        "real = gateway.main\n"
        "def interrupted(argv=None):\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C, before uvicorn's handlers\n"
        "    real(argv)\n"
        "gateway.main = interrupted\n"
        f"sys.argv = ['serving', '--model-repository', {str(tmp_path)!r}, '--http-port', '0', '--grpc-port', '0']\n"
        "gateway.run()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
