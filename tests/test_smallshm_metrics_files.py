"""The workers' metric files (``PROMETHEUS_MULTIPROC_DIR``, in /dev/shm) when that filesystem fills while
the gateway serves: prometheus_client's files were sparse, so a new series' first write to a page the
full tmpfs could not give was a SIGBUS, and ``--workers 2`` on a container's 64 MiB /dev/shm lost a
worker, then the whole gateway, at the next request. Their pages are now allocated before they are
written: a full filesystem is one error line naming it and what to do, and the worker serves on."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

from serving.metrics_files import ReservedMmapedDict
from tests.small_shm import needs_small_shm, on_small_shm

ROOT = Path(__file__).resolve().parent.parent

# a worker's metrics: new series made (refusals of models never seen), in the directory given
SERIES = textwrap.dedent(
    """
    import sys
    from serving.metrics import GatewayMetrics
    metrics = GatewayMetrics()
    metrics.refused("warm", RuntimeError(), 503)
    if len(sys.argv) > 1:  # fill the filesystem the metrics live in, as another process would
        with open(sys.argv[1], "wb") as filler:
            try:
                while True:
                    filler.write(bytes(1 << 16))
                    filler.flush()
            except OSError:
                pass
    for n in range(300):
        metrics.refused(f"model-{n}", RuntimeError(), 503)
    print("served on", flush=True)
    """
)


def _run(directory: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    command = [*prefix, sys.executable, "-c", SERIES, *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_workers_metric_files_hold_their_pages_before_a_value_is_written_there(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    files = sorted(tmp_path.glob("*.db"))
    assert files
    for path in files:
        stat = path.stat()
        assert stat.st_blocks * 512 >= stat.st_size, f"{path.name} is sparse: a full filesystem is a SIGBUS"


@needs_small_shm
def test_a_dev_shm_filling_while_the_worker_serves_is_one_error_line_naming_it_not_a_sigbus(tmp_path):
    shm = Path("/dev/shm")  # a tmpfs of 1 MiB over it, in a mount namespace of the test's own
    done = _run(shm / "metrics", str(shm / "filler"), prefix=on_small_shm("1m", f"mkdir {shm}/metrics"))
    assert done.returncode == 0, f"rc {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == "served on"
    errors = [line for line in done.stderr.splitlines() if "no room for metrics" in line]
    assert len(errors) == 1, done.stderr
    assert "in /dev/shm/metrics (/dev/shm is full)" in errors[0] and "--shm-size" in errors[0]


def test_a_filesystem_that_cannot_reserve_keeps_the_series_in_the_file_as_before(tmp_path, monkeypatch):
    def unsupported(*args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    path = tmp_path / "counter_1.db"
    written = ReservedMmapedDict(str(path))
    for n in range(2000):  # past the first 64 KiB: the file grows as prometheus_client grows it
        written.write_value(f"series-{n}", float(n), 0.0)
    written.close()
    read = {key: value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))}
    assert len(read) == 2000 and read["series-1999"] == 1999.0
