"""Run a trainer under torchrun with two CPU processes and check that both ranks end with the same weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def two_ranks_weights_hash(module: str, args: list[str], hashes: Path) -> str:
    """``python -m torch.distributed.run --nproc_per_node 2 -m <module> <args>``; the weights' hash, the
    same on both ranks (each rank writes its own with ``--debug-rank-hashes``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", module, *args, "--debug-rank-hashes", str(hashes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=110, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (hashes / "rank0.sha256").read_text(), (hashes / "rank1.sha256").read_text()
    assert rank0 == rank1 and len(rank0) == 64
    return rank0
