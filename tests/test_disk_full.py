"""A full disk (ENOSPC: a small emptyDir for /tmp, a full model volume, a quota), simulated by making the
write the code uses fail: export, the gateway's workers and the Triton launcher each fail in one line
naming what is full, or go on without what they could not write, and leave nothing half-written."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.repo_fixtures import _tiny_checkpoint, build_classifier_repository


def _no_space(*args: object, **kwargs: object) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")  # as write() or close() raise it: no path


def _fill_fails_on(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``Path.write_text`` to a file named ``name`` (or starting with it) fails with ENOSPC."""
    real = Path.write_text

    def write_text(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith(name):
            self.open("w").close()  # a write cut short leaves the file behind, empty
            _no_space()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def _entry(tmp: Path) -> dict[str, Any]:
    (tmp / "1").mkdir()
    (tmp / "1" / "model.onnx").write_bytes(b"graph")
    return {"task": "classify"}


def _leftovers(repo: Path) -> list[str]:
    """Everything hidden in and beside ``repo`` that an export may leave (staging, temporaries)."""
    return sorted(p.name for place in (repo, repo.parent) for p in place.iterdir() if p.name.startswith("."))


def test_an_entry_whose_kiln_json_fills_the_disk_fails_naming_its_staging_and_keeps_the_old_entry(
    tmp_path, monkeypatch
):
    from export.repository import write_entry

    repo = tmp_path / "repo"
    old = write_entry(repo, "m", _entry)
    before = (old / "kiln.json").read_text()
    _fill_fails_on(monkeypatch, "kiln.json")
    with pytest.raises(OSError) as failed:
        write_entry(repo, "m", _entry)
    assert failed.value.errno == errno.ENOSPC
    assert ".m.tmp-" in str(failed.value) and str(tmp_path) in str(failed.value)
    assert (old / "kiln.json").read_text() == before and _leftovers(repo) == []


def test_a_refusal_record_the_disk_cannot_take_is_kept_as_it_was_with_no_temporary_beside_it(
    tmp_path, monkeypatch
):
    from export.repository import REFUSALS, read_refusal, remember_refusal

    repo = tmp_path / "repo"
    repo.mkdir()
    remember_refusal(repo, "a_int8", {"message": "first"})
    records = (repo / REFUSALS).read_text()
    _fill_fails_on(monkeypatch, f"{REFUSALS}.tmp-")
    with pytest.raises(OSError, match="No space left on device") as failed:
        remember_refusal(repo, "b_int8", {"message": "second"})
    assert failed.value.filename == str(repo / REFUSALS)
    assert (repo / REFUSALS).read_text() == records and read_refusal(repo, "b_int8") is None
    assert sorted(p.name for p in repo.iterdir()) == [REFUSALS]


def test_an_entry_whose_refusal_cannot_be_forgotten_is_not_swapped_in_under_it(tmp_path, monkeypatch):
    """A refused entry written at last (``--force``) on a disk too full to rewrite the record stays out:
    swapped in under its record, the next export called it "refused by its gate earlier" while it
    served."""
    from export.repository import read_refusal, remember_refusal, write_entry

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("a_int8", "b_int8"):  # two: forgetting one rewrites the file (the last one unlinks it)
        remember_refusal(repo, name, {"message": "refused"})
    _fill_fails_on(monkeypatch, ".kiln_refused.json.tmp-")
    with pytest.raises(OSError, match="No space left on device"):
        write_entry(repo, "a_int8", _entry)
    assert not (repo / "a_int8").exists() and read_refusal(repo, "a_int8") is not None
    assert _leftovers(repo) == [".kiln_refused.json"]


def test_the_export_lock_is_held_on_a_disk_too_full_to_note_its_holder(tmp_path, monkeypatch):
    import export.writer_lock as writer_lock

    monkeypatch.setattr(writer_lock.os, "pwrite", _no_space)
    with writer_lock.writer_lock(tmp_path):
        assert (tmp_path / writer_lock.LOCK_NAME).exists()
    assert not (tmp_path / writer_lock.LOCK_NAME).exists()


def test_an_export_with_nothing_to_write_succeeds_on_a_full_disk(tmp_path, monkeypatch):
    """Every entry up to date: nothing to write, so a full model volume is no reason to fail (it failed
    with "[Errno 28] No space left on device", naming no file, and left the lock file behind)."""
    import export.writer_lock as writer_lock
    from export.pipeline import export_checkpoint

    repo = build_classifier_repository(tmp_path / "repo")
    checkpoint = tmp_path / "repo-checkpoints" / "lenet.pt"
    monkeypatch.setattr(writer_lock.os, "pwrite", _no_space)
    results = export_checkpoint(checkpoint, repo, max_batch_size=8, tensorrt="off", name="lenet")
    assert {r.status for r in results if r.entry == "lenet"} == {"up to date"}
    assert _leftovers(repo) == []


def test_a_full_temporary_directory_names_the_exports_work_directory(tmp_path, monkeypatch):
    import export.onnx_export as onnx_export
    from export.pipeline import export_checkpoint

    checkpoint = _tiny_checkpoint(tmp_path / "lenet.pt", "lenet", seed=0)
    monkeypatch.setattr(onnx_export, "save_model", _no_space)
    with pytest.raises(OSError) as failed:
        export_checkpoint(checkpoint, tmp_path / "repo", tensorrt="off")
    assert failed.value.errno == errno.ENOSPC
    assert failed.value.filename.startswith(str(Path(tempfile.gettempdir()) / "kiln-export-"))
    assert list((tmp_path / "repo").iterdir()) == []


def test_a_full_temporary_directory_under_an_onnx_export_error_is_not_called_the_models_fault(
    tmp_path, monkeypatch
):
    """The TorchScript retry of a graph whose axes torch.export fixed wraps its own failure in an
    OnnxExportError: a full TMPDIR read "model cannot be exported to ONNX ... its forward must trace"."""
    import export.pipeline as pipeline
    from export.onnx_export import OnnxExportError

    def exporter(ctx: Any, work: Path) -> list:
        try:
            _no_space()
        except OSError as exc:
            raise OnnxExportError("dynamic axes became fixed; the TorchScript exporter failed") from exc
        return []

    checkpoint = _tiny_checkpoint(tmp_path / "lenet.pt", "lenet", seed=0)
    monkeypatch.setattr(pipeline, "_exporter", lambda task: exporter)
    with pytest.raises(OSError) as failed:
        pipeline.export_checkpoint(checkpoint, tmp_path / "repo", tensorrt="off")
    assert not isinstance(failed.value, pipeline.FreezeError)
    assert failed.value.errno == errno.ENOSPC and "kiln-export-" in failed.value.filename


def _workers_sharing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """``serving.workers`` making its boards and weights directory in ``tmp_path``: what it made."""
    import serving.workers as workers

    made: list[Path] = []

    def board(count: int) -> Path:
        made.append(Path(tempfile.mkstemp(dir=tmp_path, prefix="board-")[1]))
        return made[-1]

    monkeypatch.setattr(workers, "sweep_stale", lambda: [])
    monkeypatch.setattr(workers, "create_board", board)
    monkeypatch.setattr(workers, "create_connection_board", board)
    monkeypatch.setattr(workers, "create_store_dir", lambda: Path(tempfile.mkdtemp(dir=tmp_path)))
    monkeypatch.delenv(workers.MULTIPROCESS_ENV, raising=False)
    return made


def test_the_workers_metrics_go_to_the_temporary_directory_when_shared_memory_is_full(tmp_path, monkeypatch):
    """prometheus_client maps sparse files there: on a full /dev/shm, where mkdir still works, every
    worker ended by SIGBUS at its first request."""
    import serving.workers as workers

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    free = {"/dev/shm": 8192, str(tmp_path): 1 << 30}
    monkeypatch.setattr(workers, "_free_bytes", lambda where: free[where])
    made = workers._metrics_dir(2)
    assert made.parent == tmp_path and made.name.startswith(workers.METRICS_PREFIX)


def test_workers_with_no_room_for_their_metrics_stop_in_one_line_leaving_nothing(tmp_path, monkeypatch):
    import serving.workers as workers

    made = _workers_sharing(monkeypatch, tmp_path)
    monkeypatch.setattr(workers, "_free_bytes", lambda where: 4096)
    with pytest.raises(SystemExit) as stopped:
        workers.run_workers(["--model-repository", str(tmp_path)], 2)
    line = str(stopped.value.code)
    assert "\n" not in line and "no room for the workers' metrics" in line and "/dev/shm 0 MiB free" in line
    assert made and list(tmp_path.iterdir()) == []


def _copies_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil

    real = shutil.copyfile

    def copyfile(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        if str(dst).endswith(".onnx"):
            raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))
        return real(src, dst, *args, **kwargs)

    def link(*args: Any, **kwargs: Any) -> None:  # a work directory on another file system
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(shutil, "copyfile", copyfile)  # what copytree's copy2 calls
    monkeypatch.setattr(os, "link", link)  # so the flavour copies the graphs it would have linked


def test_a_python_flavour_that_fills_its_work_directory_fails_in_one_line_and_leaves_no_copy(
    exported_classifiers, tmp_path, monkeypatch
):
    from serving.triton.flavour import FlavourWriteError, derive_python_flavour

    repo, _ = exported_classifiers
    _copies_fail(monkeypatch)
    with pytest.raises(FlavourWriteError) as failed:
        derive_python_flavour(repo, tmp_path / "flavour")
    message = str(failed.value)
    assert "\n" not in message and "No space left on device" in message
    assert str(tmp_path / "flavour") in message and not (tmp_path / "flavour").exists()


def test_the_triton_launcher_reports_a_full_work_directory_as_its_start_failure(
    exported_classifiers, tmp_path, monkeypatch
):
    import serving.triton.server as server

    repo, _ = exported_classifiers
    _copies_fail(monkeypatch)
    monkeypatch.setattr(server, "find_triton", lambda: object())  # never reached past the flavour
    triton = server.TritonServer(repo, tmp_path / "work")
    with pytest.raises(server.TritonError, match="No space left on device") as failed:
        triton.start()
    assert "\n" not in str(failed.value) and triton.process is None
    assert list((tmp_path / "work").iterdir()) == []


def test_a_checkpoint_the_disk_cannot_take_is_an_oserror_naming_it_and_leaves_no_temporary(
    tmp_path, monkeypatch
):
    """torch.save on a full disk raised "RuntimeError: [enforce fail at inline_container.cc:672] .
    unexpected pos 704 vs 598", naming neither the file nor the cause (reproduced on a 1 MiB tmpfs)."""
    import errno
    import shutil
    from collections import namedtuple

    import torch

    from training import checkpoint

    def full(obj, f):  # what torch's writer raises once the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 4096))
    target = tmp_path / "lenet.pt"
    with pytest.raises(OSError) as caught:
        checkpoint.save_checkpoint({"w": 1}, target)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert "No space left on device; 0.0 MiB free" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["training.classify", "training.translate"])
def test_training_that_cannot_write_ends_in_one_line_naming_the_file(command, monkeypatch, capsys):
    import errno
    import importlib

    module = importlib.import_module(command)

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device; 0.0 MiB free on its filesystem", "ck/lenet.pt")

    monkeypatch.setattr(module, "train", full)
    assert module.main([]) == 1
    assert capsys.readouterr().err == (
        "error: [Errno 28] No space left on device; 0.0 MiB free on its filesystem: 'ck/lenet.pt'\n"
    )


def test_a_nodes_first_rank_that_cannot_write_says_so_naming_its_rank(monkeypatch, capsys):
    import errno

    from training import classify

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/local/ck/.lenet.pt.tmp")

    monkeypatch.setattr(classify, "train", full)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "node-0")  # one of several processes (torchrun sets these)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")  # the first rank of another node: its own disk
    assert classify.main([]) == 1
    assert capsys.readouterr().err.startswith("error (rank 1): [Errno 28] No space left on device")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a node's other ranks leave it to that one
    assert classify.main([]) == 1
    assert capsys.readouterr().err == ""
