"""One training run at a time under one ``--output-dir`` and ``--name``: an advisory lock the run's writer
(rank 0, or the lone process) holds from before it joins its process group to its checkpoint.

Two runs under one name at once (a command started twice, a scheduler's retry while the first still
ran) both trained to the end and exited 0: their records interleaved in ``<name>.metrics.jsonl`` (two
"epoch 2" lines), each replaced the other's ``<name>.resume.pt`` after every epoch, and the checkpoint
was whichever wrote last, beside another run's resume state and curves. The second is now refused at
once, in one line naming the holder ("pid 123 on host since ..."). The lock is ``flock`` on the hidden
``.<name>.training.lock`` beside the checkpoint, released by the kernel when its holder exits, however
it exits (``kill -9`` included: a resume is never refused by a dead run); the holder removes the file
as it lets go, and the folders it made for it that stayed empty (a run refused later leaves no trace).
Holding it, a run removes what an earlier run under its name left half written when it was killed
(``kill -9``, the OOM killer, a node lost mid-save): the hidden ``.<name>.pt.<hex>.tmp`` and
``.<name>.resume.pt.<hex>.tmp`` that :func:`training.checkpoint.save_checkpoint` writes before its
rename, each as large as a checkpoint, which nothing else ever removed. A ``.<name>.resume.pt.<hex>.tmp``
is also what a run named ``<name>.resume`` writes for its checkpoint, so it is left alone while such a
run's lock file is there; and a run named ``<name>.resume`` leaves alone, while run ``<name>``'s lock
file is there, the ``.<name>.resume.pt.<hex>.tmp`` that run may be writing for its resume state.
On a network filesystem the lock is only as good as the filesystem's ``flock``; on one that keeps no
locks at all (``flock`` fails: Lustre mounted without ``-o flock``, some FUSE mounts) the run says so in
a warning and trains without one, as it did before it took a lock (it failed there, "Function not
implemented").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from kiln.lock_files import holder, note_holder, still_named

LOCK_SUFFIX = ".training.lock"
# flock's errors on a filesystem that keeps no locks (Lustre mounted without -o flock, some FUSE mounts)
_NO_LOCKS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})

log = logging.getLogger(__name__)


class RunLocked(ValueError):
    """Another process is training under this output directory and name."""


def lock_path(output_dir: str | os.PathLike, name: str) -> Path:
    """``.<name>.training.lock`` beside ``<output_dir>/<name>.pt`` (a ``--name`` may hold folders)."""
    target = Path(output_dir) / name
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike, name: str, *, writer: bool) -> Iterator[None]:
    """Hold the lock of ``output_dir``/``name`` for the ``with`` block where this process is the run's
    ``writer``; refuse (``RunLocked``) where another process holds it. Other ranks take none."""
    if not writer:
        yield
        return
    path = lock_path(output_dir, name)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    fd = _acquire(path, output_dir, name)
    if fd is not None:  # the only run under this name: what a killed one left half written is garbage
        sweep_interrupted_saves(path.parent, Path(name).name)
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                if still_named(fd, path):  # not a later run's, where this one's file was removed meanwhile
                    path.unlink()
            os.close(fd)  # closing the descriptor releases the flock
        for folder in made:  # deepest first; one the run wrote into is not empty and stays
            with contextlib.suppress(OSError):
                folder.rmdir()


# save_checkpoint's temporary files (training.checkpoint._new_temp_file): ".<file>.<8 hex>.tmp"
_TEMP = re.compile(r"\.(?P<file>.+)\.[0-9a-f]{8}\.tmp")


def sweep_interrupted_saves(folder: Path, name: str) -> None:
    """Remove the temporary files a killed run under ``name`` left in ``folder`` (the caller holds the
    run's lock), and say how much they held. A ``.<name>.resume.pt.<hex>.tmp`` that a run named
    ``<name>.resume`` may be writing (its checkpoint's) is kept while that run's lock file is there
    (testing its lock would take it for an instant, refusing that run were it starting then); so is,
    for a ``name`` ``<x>.resume``, a ``.<x>.resume.pt.<hex>.tmp`` (its checkpoint's temporary file,
    and the resume state a run named ``<x>`` writes) while run ``<x>``'s lock file is there."""
    ours = {f"{name}.pt", f"{name}.resume.pt"}
    removed, freed = 0, 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _TEMP.fullmatch(entry.name)
        if match is None or match["file"] not in ours or not entry.is_file(follow_symlinks=False):
            continue
        if match["file"] == f"{name}.resume.pt" and os.path.lexists(folder / f".{name}.resume{LOCK_SUFFIX}"):
            continue  # a run named <name>.resume may be writing it (or was killed: its next run sweeps it)
        base = name.removesuffix(".resume")  # the other way round: run <base>'s resume state, named so
        if (
            match["file"] == f"{name}.pt"
            and base != name
            and os.path.lexists(folder / f".{base}{LOCK_SUFFIX}")
        ):
            continue  # a run named <base> may be writing its resume state (or was killed, as above)
        try:
            size = entry.stat(follow_symlinks=False).st_size
            os.unlink(entry.path)
        except OSError:  # gone already, or not ours to remove: it stays, as it did before
            continue
        removed, freed = removed + 1, freed + size
    if removed:
        log.info(
            "%s: removed %d temporary file%s (%.1f MiB) that an interrupted run under --name %s left half "
            "written",
            folder,
            removed,
            "" if removed == 1 else "s",
            freed / 2**20,
            name,
        )


def _acquire(path: Path, output_dir: str | os.PathLike, name: str) -> int | None:
    """The descriptor holding the lock; None where the filesystem keeps no locks (the run goes on)."""
    for _ in range(100):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # its folder removed by a run that let go as this one made it
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLocked(
                    f"--output-dir {output_dir} --name {name}: another training run is writing there "
                    f"({holder(fd)}; {path}); wait for it to finish, or give this run another --name "
                    "or --output-dir"
                ) from None
            except OSError as error:
                if error.errno not in _NO_LOCKS:
                    raise
                # the run trained there before it took a lock: it goes on, only without the refusal
                log.warning(
                    "--output-dir %s: its filesystem keeps no file locks (%s); this run cannot refuse "
                    "another one under --name %s, so start only one",
                    output_dir,
                    error.strerror or error,
                    name,
                )
                with contextlib.suppress(OSError):
                    path.unlink()
                os.close(fd)
                return None
            if still_named(fd, path):
                with contextlib.suppress(OSError):  # only a courtesy (a full disk skips it)
                    note_holder(fd)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed it as it let go: the next run's lock is a new file
    raise OSError(f"{path}: cannot take this training run's lock (its file keeps being removed)")
