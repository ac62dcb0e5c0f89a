"""A bench killed outright (``kill -9``, the OOM killer) stops the training or export it was running as a
stage: the identity check's small translators and the GPU profile's CPU export ran as plain children,
and trained or exported on to their end after the bench was gone, cores held, files written under a
later run (the demo's stages, and every server the bench starts, already ended with it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.killed_parent import ends_within, kill, killed_at_end, said_pid

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# A stage that says its pid, then works for ever (``python -m export`` where the fake package is first).
STAGE = "import os, threading; print('stage', os.getpid(), flush=True); threading.Event().wait()"
BENCH = {
    "identity training": textwrap.dedent(
        f"""
        import sys
        from bench.translation_identity import _stage
        _stage("identity check: training", [sys.executable, "-c", {STAGE!r}], print)
        """
    ),
    "gpu profile's cpu export": textwrap.dedent(
        """
        from pathlib import Path
        from bench.gpu_serving import export_cpu_side
        export_cpu_side(Path("checkpoints"), ("resnet18",), Path("repository"), print)
        """
    ),
}


@pytest.mark.parametrize("stage", sorted(BENCH))
def test_a_stage_ends_when_the_bench_running_it_is_killed(stage: str, tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "export"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(STAGE)
    # the stage's `python -m export` (run in tmp_path) finds the fake package; the bench's own imports
    # find the project's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)])}
    bench = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{BENCH[stage]}"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    with killed_at_end(bench) as started:
        child = said_pid(bench.stdout, "stage ")
        assert child is not None, "the stage never started"
        started.append(child)
        kill(bench)
        assert ends_within(child, 10), f"the {stage} ran on after the bench was killed"
