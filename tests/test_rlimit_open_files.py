"""A gateway started under a low soft open-file limit (a login shell's ``ulimit -n 1024``, systemd's
default for services) met it at about that many client connections, where the event loop closes each new
one unanswered and logs nothing: clients saw resets and the log said nothing at all. The gateway now
raises its soft limit to the hard one as it starts, and says once in a warning when the limit is still
low, naming it and how to raise it."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import resource, sys
from serving.__main__ import main
try:
    main(["--model-repository", sys.argv[1], "--http-port", "0", "--grpc-port", "0"])
except SystemExit:
    pass
print("limit", *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def _gateway_under(soft: int, hard: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """``main`` in a process whose open-file limits are ``soft`` and ``hard``, on a repository that is
    not there (it stops once the limit is dealt with)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path / "missing")],
        cwd=ROOT,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_soft_open_file_limit_is_raised_to_the_hard_one_without_a_warning(tmp_path):
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 8192)
    if hard < 4096 and hard != resource.RLIM_INFINITY:
        hard = 4096  # a hard limit below the warning's threshold is the other test's case
    out = _gateway_under(256, hard, tmp_path)
    assert f"limit {hard} {hard}" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "open-file limit" not in out.stderr


def test_a_low_hard_limit_is_named_once_at_start_up(tmp_path):
    out = _gateway_under(256, 512, tmp_path)
    assert "limit 512 512" in out.stdout, out.stdout + out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if "open-file limit" in line]
    assert len(lines) == 1 and " WARNING " in lines[0], out.stderr[-2000:]
    assert "limit is 512" in lines[0] and "ulimit -n" in lines[0]
