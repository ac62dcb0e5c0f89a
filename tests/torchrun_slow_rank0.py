"""A trainer's CLI under test conditions for how multi-process runs end (launched by torchrun):
``python -m tests.torchrun_slow_rank0 <trainer module> <trainer args>``.

Environment: ``KILN_TEST_PG_TIMEOUT_S``, the process group's timeout in seconds (short, so a rank left
waiting in a collective fails fast); ``KILN_TEST_SLOW_RANK0``, ``module:attr=seconds``, a function rank 0
runs that much later on its first call; ``KILN_TEST_TEXTS_LOG``, a folder where each rank writes one line per
``training.translate_loop.translate_texts`` call: how many texts it decoded.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import os
import runpy
import sys
import time
from pathlib import Path

import torch.distributed as dist


def short_timeout(seconds: float) -> None:
    """Every process group this process creates gets ``seconds`` as its timeout."""
    for name in ("init_process_group", "new_group"):
        setattr(dist, name, with_timeout(getattr(dist, name), datetime.timedelta(seconds=seconds)))


def with_timeout(make_group, timeout: datetime.timedelta):
    @functools.wraps(make_group)
    def wrapped(*args, **kwargs):
        kwargs["timeout"] = timeout
        return make_group(*args, **kwargs)

    return wrapped


def slow_on_rank0(target: str) -> None:
    """``module:attr=seconds``: that function sleeps ``seconds`` on rank 0 before its first call."""
    name, seconds = target.rsplit("=", 1)
    module_name, attr = name.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, attr)

    slept = []

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        if os.environ.get("RANK", "0") == "0" and not slept:
            slept.append(True)
            time.sleep(float(seconds))
        return original(*args, **kwargs)

    setattr(module, attr, wrapped)


def log_texts(folder: str) -> None:
    """Each rank appends to ``rank<N>.texts`` the number of texts of every ``translate_texts`` call."""
    from training import translate_loop

    original = translate_loop.translate_texts
    path = Path(folder, f"rank{os.environ.get('RANK', '0')}.texts")

    @functools.wraps(original)
    def wrapped(model, tokenizers, texts, **kwargs):
        with path.open("a") as fh:
            fh.write(f"{len(texts)}\n")
        return original(model, tokenizers, texts, **kwargs)

    translate_loop.translate_texts = wrapped


if __name__ == "__main__":
    if "KILN_TEST_PG_TIMEOUT_S" in os.environ:
        short_timeout(float(os.environ["KILN_TEST_PG_TIMEOUT_S"]))
    if "KILN_TEST_SLOW_RANK0" in os.environ:
        slow_on_rank0(os.environ["KILN_TEST_SLOW_RANK0"])
    if "KILN_TEST_TEXTS_LOG" in os.environ:
        log_texts(os.environ["KILN_TEST_TEXTS_LOG"])
    trainer, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(trainer, run_name="__main__", alter_sys=True)
