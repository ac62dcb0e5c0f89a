"""A torchrun rank ends with its agent: ``training/__init__.py`` calls :func:`end_with_agent` first thing,
before the trainers' imports (seconds of torch), so that an agent killed while its ranks start is
caught too. Nothing heavy here: it runs at import."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_agent(env: Mapping[str, str]) -> bool:
    """Under torchrun, have the kernel send this rank SIGTERM when its agent (the parent process) dies,
    however it dies; whether that was set. torchrun starts its ranks in sessions of their own and stops
    them itself, so a torchrun killed outright (``kill -9``, the OOM killer) left every rank training on
    to its last epoch as an orphan, its cores, ports and memory held, writing the run's checkpoint and
    resume state under a new run of the same ``--name``; killed while they started, the ranks waited
    for its store up to ``--dist-timeout`` (Linux; elsewhere nothing). SIGTERM is what torchrun itself
    sends its ranks when it stops."""
    if "TORCHELASTIC_RUN_ID" not in env or not sys.platform.startswith("linux"):
        return False
    agent = os.getppid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    if os.getppid() != agent:  # the agent died before the prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
    return True
