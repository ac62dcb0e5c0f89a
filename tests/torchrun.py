"""Run a module under torchrun with two CPU processes (on one node, or as two nodes of one job); for trainers,
check that both ranks end with the same weights."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# Long enough for the ranks' own skew on a busy machine, short beside the slowed rank-0 work.
SLOW_RANK0_TIMEOUT_S = 5.0


def torchrun_env(scratch: Path) -> dict[str, str]:
    """One thread a rank; Python's tracebacks of every thread if a rank dies of a signal (a rank
    aborted in C++ otherwise leaves only torchrun's "Signal 6 received"); the launcher's
    ``torchelastic_*`` log directories in ``scratch`` (the test's own temporary directory), not in
    the system's, where every run of the suite left two."""
    return {"OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "TMPDIR": str(scratch)}


def two_ranks(
    args: list[str], scratch: Path, env: dict | None = None, *, launcher: tuple[str, ...] = ("--standalone",)
) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run <launcher> --nproc_per_node 2 <args>``, finished; ``launcher``
    holds torchrun's own flags (rendezvous, ``--max-restarts``)."""
    scratch.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "--nproc_per_node", "2", *args]
    env = {**os.environ, **torchrun_env(scratch), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=110, env=env, check=False)


def two_ranks_weights_hash(
    module: str, args: list[str], hashes: Path, *, slow_rank0: str | None = None, env: dict | None = None
) -> str:
    """``python -m torch.distributed.run --nproc_per_node 2 -m <module> <args>``; the weights' hash, the
    same on both ranks (each rank writes its own with ``--debug-rank-hashes``).

    ``slow_rank0`` (``module:attr=seconds``) runs the trainer through ``tests.torchrun_slow_rank0``
    with a process-group timeout of ``SLOW_RANK0_TIMEOUT_S`` and that function slowed on rank 0.
    """
    env = dict(env or {})
    launcher = ["-m", module]
    if slow_rank0:
        launcher = ["-m", "tests.torchrun_slow_rank0", module]
        env.update(KILN_TEST_SLOW_RANK0=slow_rank0, KILN_TEST_PG_TIMEOUT_S=str(SLOW_RANK0_TIMEOUT_S))
    done = two_ranks(
        [*launcher, *args, "--debug-rank-hashes", str(hashes)], hashes.parent / "torchrun-tmp", env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (hashes / "rank0.sha256").read_text(), (hashes / "rank1.sha256").read_text()
    assert rank0 == rank1 and len(rank0) == 64
    return rank0


def tiny_lenet(out: Path, epochs: int) -> list[str]:
    """A lenet run of a few seconds an epoch on two CPU processes."""
    args = ["--model", "lenet", "--epochs", str(epochs), "--limit-train", "128", "--limit-val", "32"]
    args += ["--image-size", "16", "--batch-size", "16", "--no-progress", "--device", "cpu"]
    return [*args, "--output-dir", str(out)]


def two_nodes(
    args: list[str], scratch: Path, env: dict, *, endpoint: str, launcher: tuple[str, ...], timeout_s: float
) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents on this machine as two nodes of one job, one process each, meeting at the
    c10d rendezvous store ``endpoint`` the caller hosts (``is_host=false``); each agent's result, with
    a ``returncode`` of None for one still running after ``timeout_s``, then stopped with SIGTERM (its
    workers run in sessions of their own: torchrun stops them on SIGTERM)."""
    scratch.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-conf", "is_host=false"]
    cmd += ["--local-addr", "127.0.0.1", *launcher, *args]
    env = {**os.environ, **torchrun_env(scratch), **env}
    popen = {"env": env, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    agents = [subprocess.Popen(cmd, **popen) for _ in range(2)]
    deadline = time.monotonic() + timeout_s
    results = []
    for agent in agents:
        try:
            out, err = agent.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            code = agent.returncode
        except subprocess.TimeoutExpired:
            agent.terminate()
            try:
                out, err = agent.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                agent.kill()
                out, err = agent.communicate()
            code = None
        results.append(subprocess.CompletedProcess(cmd, code, out, err))
    return results
