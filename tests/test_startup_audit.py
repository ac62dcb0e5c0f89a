"""Operator mistakes at start-up, each one clear line naming the model, the file and the problem: a
config.pbtxt its graph disagrees with, no version to serve, version directories that are no version
numbers, labels that do not count the classes, a directory without a config; a temporary directory
that takes no shared weights; a stop signal while the models load."""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from tests.repo_fixtures import build_classifier_repository


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("startup") / "repo")


@pytest.fixture
def repo(exported: Path, tmp_path: Path) -> Path:
    """A copy of the exported repository (one classifier, ``lenet``) for a test to break."""
    return Path(shutil.copytree(exported, tmp_path / "repo"))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1))


def _start(root: Path, options: OrtOptions | None = None) -> tuple[bool, dict[str, str], list[str]]:
    """Start and stop a backend on ``root``: server ready, each model's failure, models loaded."""

    async def go() -> tuple[bool, dict[str, str], list[str]]:
        backend = OnnxRuntimeBackend(Repository(root), options or OrtOptions(lone_request_threads=0))
        await backend.start()
        try:
            loaded = sorted({name for name, _ in backend._models})
            return await backend.is_ready(), dict(backend._failed), loaded
        finally:
            await backend.stop()

    return asyncio.run(go())


BROKEN_CONFIGS = {
    "a fixed dimension": ("dims: 16", "dims: 8", "input 'images' is [-1, 8, 16, 1] in the config"),
    "a datatype": ("TYPE_UINT8", "TYPE_FP32", "input 'images' is TYPE_FP32 in the config but tensor(uint8)"),
    "no batch axis": (
        "max_batch_size: 8",
        "max_batch_size: 0",
        "input 'images' is [16, 16, 1] in the config",
    ),
    "an output name": (
        'name: "logits"',
        'name: "scores"',
        "output 'scores' is not one of the graph's outputs",
    ),
}


@pytest.mark.parametrize("what", sorted(BROKEN_CONFIGS))
def test_a_config_its_graph_disagrees_with_fails_that_model_naming_both_files(repo, what, caplog):
    old, new, problem = BROKEN_CONFIGS[what]
    _edit(repo / "lenet" / "config.pbtxt", old, new)
    with caplog.at_level(logging.ERROR):
        ready, failed, loaded = _start(repo)
    assert not ready and loaded == []
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, lines
    assert "model lenet" in lines[0] and problem in lines[0], lines[0]
    assert (
        f"{repo / 'lenet' / 'config.pbtxt'} does not match {repo / 'lenet' / '1' / 'model.onnx'}" in lines[0]
    )
    assert problem in failed["lenet"]


def test_a_model_with_no_version_to_serve_is_a_failed_load_and_the_server_is_not_ready(repo, caplog):
    _edit(
        repo / "lenet" / "config.pbtxt",
        "latest {\n    num_versions: 1\n  }",
        "specific {\n    versions: 3\n  }",
    )
    with caplog.at_level(logging.ERROR):
        ready, failed, _ = _start(repo)
    assert not ready
    assert "version_policy specific [3]" in failed["lenet"] and "[1]" in failed["lenet"]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert lines == [f"model lenet failed to load: {failed['lenet']}"] and str(repo / "lenet") in lines[0]


def test_an_empty_version_directory_leaves_no_version_and_says_so(repo):
    for child in (repo / "lenet" / "1").iterdir():
        child.unlink()
    ready, failed, _ = _start(repo)
    assert not ready and "no version to serve" in failed["lenet"]


def test_a_version_directory_with_a_leading_zero_is_ignored_as_triton_ignores_it(repo, caplog):
    (repo / "lenet" / "1").rename(repo / "lenet" / "02")
    (repo / "lenet" / "1").mkdir()
    shutil.copy(repo / "lenet" / "02" / "model.onnx", repo / "lenet" / "1" / "model.onnx")
    _edit(repo / "lenet" / "config.pbtxt", "latest {\n    num_versions: 1\n  }", "all {\n  }")
    with caplog.at_level(logging.WARNING, logger="serving.execution"):
        repository = Repository(repo)
    assert repository.entries["lenet"].versions == ["1"]  # not "2", whose directory 2/ does not exist
    assert any("'02'" in r.getMessage() and "model lenet" in r.getMessage() for r in caplog.records)
    ready, failed, loaded = _start(repo)
    assert ready and failed == {} and loaded == ["lenet"]


def test_a_labels_file_that_does_not_count_the_classes_is_named_in_a_warning(repo, caplog):
    (repo / "lenet" / "labels.txt").write_text("zero\none\n")
    with caplog.at_level(logging.WARNING, logger="serving.execution"):
        Repository(repo)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "model lenet" in lines[0] and str(repo / "lenet" / "labels.txt") in lines[0]
    assert "2 labels" in lines[0] and "3 classes" in lines[0]


def test_the_labels_and_version_warnings_keep_the_repository_readers_logger_name(repo, caplog):
    """An operator's log filter keys on the name each line shows: the reader's warnings were
    ``serving.execution.repository``'s before its labels and versions moved to modules of their own."""
    (repo / "lenet" / "labels.txt").write_text("zero\none\n")
    (repo / "lenet" / "v2").mkdir()  # no version number: ignored, with a warning
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        Repository(repo)
    warned = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 2, warned
    assert {name for name, _ in warned} == {"serving.execution.repository"}, warned


def test_a_directory_without_a_config_is_named_not_silently_skipped(repo, caplog):
    (repo / "lenet" / "config.pbtxt").unlink()
    (repo / "notes").mkdir()  # no version directory: not a model entry at all
    with caplog.at_level(logging.WARNING, logger="serving.execution"):
        repository = Repository(repo)
    assert repository.names() == [] and repository.errors == {}  # a failed model would keep it unready
    assert any(
        str(repo / "lenet") in r.getMessage() and "does not complete a config" in r.getMessage()
        for r in caplog.records
    )
    assert any(
        str(repo / "notes") in r.getMessage() and "no config.pbtxt" in r.getMessage() for r in caplog.records
    )


def test_a_temporary_directory_that_takes_no_shared_weights_still_serves_every_model(
    repo, monkeypatch, caplog
):
    import serving.execution.shared_weights as shared_weights

    def full(*args: object, **kwargs: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shared_weights.tempfile, "mkdtemp", full)
    with caplog.at_level(logging.WARNING, logger="serving.execution.shared_weights"):
        ready, failed, loaded = _start(repo, OrtOptions(lone_request_threads=0, share_weights=True))
    assert ready and failed == {} and loaded == ["lenet"]
    assert any("No space left on device" in r.getMessage() for r in caplog.records)


def test_workers_whose_shared_files_cannot_be_made_stop_in_one_line_leaving_none(monkeypatch, tmp_path):
    import serving.workers as workers

    made: list[Path] = []

    def board(count: int) -> Path:
        made.append(Path(tempfile.mkstemp(dir=tmp_path, prefix="board-")[1]))
        return made[-1]

    def no_room(count: int) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(workers, "sweep_stale", lambda: [])
    monkeypatch.setattr(workers, "create_board", board)
    monkeypatch.setattr(workers, "create_store_dir", lambda: Path(tempfile.mkdtemp(dir=tmp_path)))
    monkeypatch.setattr(workers, "create_connection_board", no_room)
    with pytest.raises(SystemExit) as stopped:
        workers.run_workers(["--model-repository", str(tmp_path)], 2)
    assert "No space left on device" in str(stopped.value.code)
    assert made and list(tmp_path.iterdir()) == []  # the occupancy board and the weights' directory went


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 0)])
def test_a_stop_signal_while_the_models_load_stops_loading_them(exported, tmp_path, sig, code):
    root = tmp_path / "slow"
    for index in range(3):  # many instances each: loading takes long after the first model's line
        entry = shutil.copytree(exported / "lenet", root / f"m{index}")
        _edit(entry / "config.pbtxt", 'name: "lenet"', f'name: "m{index}"')
        _edit(entry / "config.pbtxt", "count: 1", "count: 60")
    command = [sys.executable, "-m", "serving", "--model-repository", str(root), "--http-port", "0"]
    command += ["--grpc-port", "0", "--log-level", "info", "--lone-request-threads", "0"]
    gateway = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert gateway.stderr is not None
        for line in gateway.stderr:
            if "model m0 version 1: provider" in line:
                break
        gateway.send_signal(sig)
        rest = gateway.stderr.read()
        assert gateway.wait(timeout=120) == code, rest
    finally:
        gateway.kill()
        gateway.wait()
    # models load side by side (OnnxRuntimeBackend.start): m1 may have loaded beside m0 before the signal
    loaded_beside = "model m1 version 1: provider" in rest and "not loaded: m2" in rest
    assert ("not loaded: m1, m2" in rest or loaded_beside) and "Uvicorn running" not in rest, rest
    assert list(Path(tempfile.gettempdir()).glob(f"kiln-weights-{gateway.pid}-*")) == []
    # the operator's stop is one info line: it was logged as two errors, "gateway start-up failed: the
    # backend: a stop signal arrived ..." and uvicorn's "Application startup failed. Exiting."
    assert (
        " INFO [" in rest
        and "gateway start-up stopped: a stop signal arrived while the models loaded" in rest
    )
    assert " ERROR " not in rest and "startup failed" not in rest and "start-up failed" not in rest, rest
