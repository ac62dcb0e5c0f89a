"""An export interrupted at its end: a Ctrl-C / SIGTERM while entries are swapped in, and a rerun after a
SIGKILL that finds its entries up to date."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from export import repository
from export.repository import write_entry, written_together
from training.checkpoint import file_sha256

TRANSLATOR = ("t_encoder", "t_decoder", "t")  # the order a translator's entries are swapped in


def _fill(weights: str, meta: dict[str, Any] | None = None) -> Callable[[Path], dict[str, Any]]:
    def fill(tmp: Path) -> dict[str, Any]:
        (repository.version_dir(tmp) / "model.onnx").write_text(weights)
        (tmp / "config.pbtxt").write_text(f'name: "{tmp.name}"\n')
        return {"task": "translate", **(meta or {})}

    return fill


def _weights(entry: Path) -> str:
    return (entry / "1" / "model.onnx").read_text()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_translators_entries_are_swapped_in_waits_for_the_last_of_them(
    tmp_path, monkeypatch, sig
):
    repo = tmp_path / "repo"
    for name in TRANSLATOR:
        write_entry(repo, name, _fill("old"))
    signal.signal(sig, signal.default_int_handler)  # as export's main makes SIGTERM; conftest restores
    swap_in = repository._swap_in

    def signalled_after_the_encoder(staging: Path, final: Path) -> None:
        swap_in(staging, final)
        if final.name == "t_encoder":  # Ctrl-C, or docker stop, right after the first swap
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(repository, "_swap_in", signalled_after_the_encoder)
    with pytest.raises(KeyboardInterrupt), written_together(repo):
        for name in TRANSLATOR:
            write_entry(repo, name, _fill("new"))
    # all three new (before: the new encoder beside the old decoder, a translator the gateway refuses)
    assert {name: _weights(repo / name) for name in TRANSLATOR} == dict.fromkeys(TRANSLATOR, "new")
    assert sorted(p.name for p in repo.iterdir()) == sorted(TRANSLATOR)
    assert signal.getsignal(sig) is signal.default_int_handler  # the handler is put back


def test_a_signal_while_one_entry_is_swapped_in_leaves_it_whole(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_entry(repo, "m", _fill("old"))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    replace = os.replace

    def signalled_between_the_renames(src: Any, dst: Any) -> None:  # _swap_in's fallback, no exchange
        replace(src, dst)
        if ".old-" in Path(dst).name:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(repository, "_exchange", lambda a, b: "no exchange here")
    monkeypatch.setattr(repository.os, "replace", signalled_between_the_renames)
    with pytest.raises(KeyboardInterrupt):
        write_entry(repo, "m", _fill("new"))
    assert _weights(repo / "m") == "new"  # before: no entry m at all until the next write of it


def test_a_rerun_that_finds_its_entries_up_to_date_sweeps_what_a_killed_run_staged(tmp_path):
    from export.pipeline import export_checkpoint
    from export.results import ExportOptions
    from kiln.versions import EXPORT_VERSION
    from tests.classifier_exports import write_checkpoint

    ckpt, repo = write_checkpoint(tmp_path, "lenet"), tmp_path / "repo"
    current = {
        "source_checkpoint": {"path": str(ckpt), "sha256": file_sha256(ckpt), "model": "lenet"},
        "export": {"export_version": EXPORT_VERSION, "max_batch_size": ExportOptions().max_batch_size},
        "precision": "fp32",
    }
    write_entry(repo, "lenet", _fill("current", current))  # what the killed run's rerun finds current
    area, dead = tmp_path / f".repo{repository.STAGING_SUFFIX}", _dead_pid()
    staged = area / f".lenet.tmp-{repository._HOST}-{dead}-0badf00d"  # SIGKILLed while staging lenet
    removed = area / f".lenet_int8.tmp-{repository._HOST}-{dead}-0badf00d"  # ... or removing lenet_int8
    for leftover in (staged, removed):
        (leftover / "1").mkdir(parents=True)
        (leftover / "1" / "model.onnx").write_text("a graph of hundreds of MB")
    results = export_checkpoint(ckpt, repo, tensorrt="off")
    assert [(r.entry, r.status) for r in results] == [("lenet", "up to date"), ("lenet_trt", "skipped")]
    assert not area.exists()  # before: both stayed beside the repository for good
    assert json.loads((repo / "lenet" / "kiln.json").read_text())["source_checkpoint"]["model"] == "lenet"


def test_what_an_export_killed_but_not_yet_reaped_left_is_swept(tmp_path):
    from export.work_dir import PREFIX, sweep_work_dirs

    # a zombie, as an export killed while another waited for its lock is (for good under a PID 1 that
    # reaps no orphans, as a container's may be)
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOWAIT)  # ended, still unreaped
        repo, host = tmp_path / "repo", repository._HOST
        staged = tmp_path / f".repo{repository.STAGING_SUFFIX}" / f".m.tmp-{host}-{killed.pid}-0badf00d"
        work = tmp_path / f"{PREFIX}{host}-{killed.pid}-0badf00d"
        for leftover in (staged / "1", work / "fp32"):
            leftover.mkdir(parents=True)
        write_entry(repo, "m", _fill("new"))
        assert not staged.exists()  # before: kept as a live export's, for good under such a PID 1
        assert sweep_work_dirs(tmp_path) == [work]
    finally:
        killed.wait()
