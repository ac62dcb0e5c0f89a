"""Operating-system names for the gateway's threads.

Python 3.11 names a thread for Python only: ``top -H``, ``ps -L``, a native profiler and
``/proc/<pid>/task/<tid>/comm`` show every thread of a gateway worker as ``python``. The gateway's own
threads (decode, batch execution, tokenization, model loading) call :func:`name_os_thread` as they
start, so their role shows outside Python too (``bench.frontend_cost`` reads each role's CPU that way).
"""

from __future__ import annotations

import ctypes
import sys
import threading

_PR_SET_NAME = 15  # prctl option (linux/prctl.h)
NAME_BYTES = 15  # what Linux keeps of a thread's name (16 with the terminating NUL)
_prctl: list = []  # [] until the first call decides: [prctl function or None]


def name_os_thread(name: str | None = None) -> bool:
    """Name the calling thread ``name`` (default: its Python name) for the OS, cut to whole characters
    within :data:`NAME_BYTES` bytes; False where the OS keeps no such name (not Linux) or refused it."""
    if not _prctl:
        try:
            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None)
        except (OSError, AttributeError):
            _prctl.append(None)
    prctl = _prctl[0]
    if prctl is None:
        return False
    raw = (threading.current_thread().name if name is None else name).encode("utf-8", "replace")
    raw = raw[:NAME_BYTES].decode("utf-8", "ignore").encode()  # whole characters only
    return prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) == 0
