"""A torchrun agent killed outright (``kill -9``, the OOM killer) takes its ranks with it: torchrun starts
them in sessions of their own and stops them itself, so they trained on as orphans to their last epoch,
cores, ports and the run's files held, or, killed while they started, waited for its store up to
``--dist-timeout`` (``training.agent_watch.end_with_agent``, from the package's import)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.killed_parent import ends_within, kill, killed_at_end

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# The rank: starts as the trainers do (``python -m training.<trainer>`` imports the package first), says
# so, then trains for ever.
RANK = textwrap.dedent(
    """
    import threading
    import training
    print("started", flush=True)
    threading.Event().wait()
    """
)
# The agent: starts the rank as torchrun does (a session of its own), names it, waits on it.
AGENT = textwrap.dedent(
    """
    import subprocess, sys
    rank = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)
    print(rank.pid, flush=True)
    rank.wait()
    """
)


def _start_agent(env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """The agent, and its rank's pid once the rank has started."""
    env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0", "OMP_NUM_THREADS": "1", **env}
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, RANK], stdout=subprocess.PIPE, text=True, env=env, cwd=os.getcwd()
    )
    rank = int(agent.stdout.readline())
    assert agent.stdout.readline().strip() == "started"
    return agent, rank


def test_a_rank_ends_when_its_torchrun_agent_is_killed() -> None:
    agent, rank = _start_agent({"TORCHELASTIC_RUN_ID": "interrupt-test"})
    with killed_at_end(agent) as started:
        started.append(rank)
        kill(agent)
        assert ends_within(rank, 10), "the rank trained on after its torchrun agent was killed"
