"""A session fixture's value built once for every pytest-xdist worker of a run, not once per worker.

``make test`` runs the suite in one process per core (pytest-xdist); each worker has its own session,
so a session fixture such as the export of every classifier (~35 s of torch.onnx on the CI machine)
would be built by each worker. :func:`built_once` builds it in the directory the workers share, under
an exclusive lock: the first worker to ask builds it, the others wait for it and read it back. Values
are pickled, so they must be picklable; nothing may write into what they name.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def built_once(shared: Path, name: str, build: Callable[[Path], T]) -> T:
    """``build(directory)``'s value (a new directory in ``shared``), built by the first caller of this run's workers.

    ``shared`` is the directory every worker of the run sees (the parent of a worker's base temporary
    directory under xdist; the base itself in a run of one process). A build that raised is not
    recorded, so the next caller builds again, in a directory of its own, and meets the same error."""
    shared.mkdir(parents=True, exist_ok=True)
    done = shared / f"{name}.pickle"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return pickle.loads(done.read_bytes())
        value = build(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared)))
        staged = done.with_suffix(".pickle.tmp")
        staged.write_bytes(pickle.dumps(value))
        staged.replace(done)
        return value


def shared_directory(tmp_path_factory) -> Path:
    """The directory every worker of this run shares: the parent of a worker's base temporary directory
    under xdist (``pytest-N/popen-gwK``), the base temporary directory in a run of one process."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
