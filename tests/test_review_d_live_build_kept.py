"""The sweep of killed beam-step builds' working directories (serving.decoding.native) keeps a live one
however old its directory looks: a clock stepped forward, a build frozen (``docker pause``) or a cache
over NFS whose server's clock runs behind made a live build's directory look older than any live build's,
and a start of another worker removed it under its compiler (that worker then decoded with numpy)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from serving.decoding import native

# a compiler that says where it writes (the fifo "started"), waits to be let go (the fifo "go"), then
# writes the file after ``-o``, as build() asks of one
FAKE_CC = """#!/bin/sh
while [ $# -gt 0 ]; do [ "$1" = -o ] && out="$2"; shift; done
echo "$out" > "$FAKE_CC_STARTED"
read _ < "$FAKE_CC_GO"
: > "$out"
"""


def test_a_live_build_whose_directory_looks_old_is_not_swept(tmp_path, monkeypatch):
    cc, started, go = tmp_path / "fake-cc", tmp_path / "started", tmp_path / "go"
    cc.write_text(FAKE_CC)
    cc.chmod(0o755)
    os.mkfifo(started)
    os.mkfifo(go)
    monkeypatch.setenv("FAKE_CC_STARTED", str(started))
    monkeypatch.setenv("FAKE_CC_GO", str(go))
    cache, outcome = tmp_path / "cache", {}

    def building() -> None:
        try:
            outcome["built"] = native.build(str(cc), cache / "beam_step-abcd-ef01.so")
        except Exception as exc:  # noqa: BLE001 - the test reads it
            outcome["failed"] = exc

    thread = threading.Thread(target=building, daemon=True)
    thread.start()
    working = Path(started.read_text().strip()).parent  # the compiler runs now
    then = time.time() - 3 * native.BUILD_TIMEOUT_S  # as a clock stepped forward by 6 minutes sees it
    os.utime(working, (then, then))
    try:
        native._sweep_killed_builds(cache)  # another worker's start
        assert working.is_dir(), "a live build's working directory was removed"
    finally:
        go.write_text("\n")
        thread.join(60)
    assert "failed" not in outcome, outcome
    assert outcome["built"].is_file()
    assert not working.exists()  # its own build removed it, as ever


def test_a_killed_builds_directory_is_still_swept_once_old(tmp_path):
    """Its lock went with its process: the lock file a build leaves does not keep its directory."""
    cache = tmp_path / "cache"
    left = cache / f"{native.BUILD_DIR_PREFIX}k1l2m3"
    left.mkdir(parents=True)
    (left / native.BUILD_LOCK).touch()
    then = time.time() - 3 * native.BUILD_TIMEOUT_S
    os.utime(left, (then, then))
    native._sweep_killed_builds(cache)
    assert not left.exists()
