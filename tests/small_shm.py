"""Run a program on a small /dev/shm of its own, as a container's 64 MiB one: a tmpfs mounted over it in a
private mount namespace (``unshare --mount``), so the machine's /dev/shm is never filled. Needs root."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def can_mount_tmpfs() -> bool:
    """Whether this process may mount a tmpfs in a mount namespace of its own (root and ``unshare``)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = ["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"]
    return subprocess.run(probe, capture_output=True).returncode == 0


needs_small_shm = pytest.mark.skipif(
    not can_mount_tmpfs(), reason="needs root and unshare to mount a small tmpfs"
)


def on_small_shm(size: str, *setup: str) -> tuple[str, ...]:
    """The command prefix that runs the command after it with a tmpfs of ``size`` (``mount -o size=``) on
    /dev/shm, once the shell commands ``setup`` have run there; it runs only if all of them succeed."""
    steps = [f"mount -t tmpfs -o size={size} tmpfs /dev/shm", *setup, 'exec "$@"']
    return ("unshare", "--mount", "sh", "-c", " && ".join(steps), "sh")
