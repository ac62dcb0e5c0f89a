"""A gateway's sweep of killed gateways' leftovers (``serving.workers.sweep_stale``) is not stopped by a
FIFO that another user of the machine put in /tmp or /dev/shm under a held directory's name: opening
it waited for a writer, so every gateway started there, by any user, hung before it served
(reproduced with two users: ``mkfifo /tmp/kiln-weights-1-held-x``, then ``python -m serving``)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from serving import process_tree
from serving.workers import sweep_stale
from tests.waiting import DEADLINE_S


def test_a_fifo_named_as_a_held_directory_neither_hangs_the_sweep_nor_goes(tmp_path: Path) -> None:
    fifo = tmp_path / f"kiln-weights-1-{process_tree.HELD}-planted"
    os.mkfifo(fifo)
    dead = process_tree.make_held_dir("kiln-weights-", tmp_path)
    process_tree.release(dead)  # as the kernel does once its gateway is killed
    swept: list[list[Path]] = []
    done = threading.Event()

    def sweep() -> None:
        swept.append(sweep_stale((tmp_path,)))
        done.set()

    threading.Thread(target=sweep, daemon=True).start()
    finished = done.wait(timeout=DEADLINE_S)  # at once, unless it hangs on the FIFO
    if not finished:  # let the blocked open go (a writer), so that the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert finished, "the sweep hung opening a FIFO"
    assert swept == [[dead]]
    assert fifo.exists()
