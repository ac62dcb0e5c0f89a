"""The files a run leaves: a new training run under an earlier run's name replaces that run's files
only once it has a record of its own, then all of them, so that a run failed or interrupted at any
point leaves one run's files, never a mix; and the boards ``--workers`` share, which go to the
temporary directory when /dev/shm is full, leaving nothing there."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import pytest

from tests import test_train_translate
from tests.test_train_translate import tiny_argv
from training import classify, classify_epoch, classify_loop, translate, translate_loop
from training.checkpoint import load_checkpoint
from training.classify_config import TrainConfig
from training.classify_resolve import resolve
from training.divergence import TrainingDiverged
from training.resume import load_resume, replaced_files
from training.tracking import MetricsLogger, read_metrics, run_files

tsv = test_train_translate.tsv  # the tiny TSV corpus fixture, shared


def lenet_config(out: Path, **overrides) -> TrainConfig:
    """A tiny lenet run (3 steps an epoch) writing ``out/lenet.*``."""
    fields = dict(model="lenet", image_size=16, limit_train=96, limit_val=48, batch_size=32, epochs=1)
    fields.update(progress=False, device="cpu", output_dir=str(out))
    return TrainConfig(**{**fields, **overrides})


def snapshot(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def interrupted_at_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Ctrl-C in the classifier's ``epoch``-th epoch (1-based) of this run."""
    real, calls = classify_loop.train_epoch, []

    def train_epoch(run, index):
        calls.append(index)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(run, index)

    monkeypatch.setattr(classify_loop, "train_epoch", train_epoch)


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> dict[str, bytes]:
    """The files of a finished one-epoch lenet run (seed 0), by name."""
    out = tmp_path_factory.mktemp("earlier")
    classify.train(lenet_config(out))
    return snapshot(out)


def directory_of(files: dict[str, bytes], out: Path) -> Path:
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


def test_the_earlier_run_is_a_whole_run(earlier_run):
    assert sorted(earlier_run) == ["lenet.curves.png", "lenet.metrics.jsonl", "lenet.pt", "lenet.resume.pt"]


def test_a_new_run_interrupted_in_its_first_epoch_leaves_the_earlier_runs_files_as_they_were(
    earlier_run, tmp_path, monkeypatch
):
    out = directory_of(earlier_run, tmp_path)
    interrupted_at_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        classify.train(lenet_config(out, seed=1, epochs=3))
    assert snapshot(out) == earlier_run


def test_a_new_run_diverging_in_its_first_epoch_leaves_the_earlier_runs_files_as_they_were(
    earlier_run, tmp_path, monkeypatch
):
    out = directory_of(earlier_run, tmp_path)
    real = classify_epoch.example_losses

    def nan_losses(*args):
        logits, losses = real(*args)
        return logits, losses * math.nan

    monkeypatch.setattr(classify_epoch, "example_losses", nan_losses)
    with pytest.raises(TrainingDiverged):
        classify.train(lenet_config(out, seed=1, epochs=3))
    assert snapshot(out) == earlier_run


def test_a_new_run_interrupted_after_an_epoch_keeps_the_earlier_model_and_resumes_from_its_own_state(
    earlier_run, tmp_path, monkeypatch
):
    """Before, the new run emptied the earlier metrics at its start. Now its metrics and resume state
    replace the earlier ones at its first record, and the earlier lenet.pt (a trained model, maybe the
    very one a --finetune started from) stays until the new run writes its own over it."""
    out = directory_of(earlier_run, tmp_path)
    interrupted_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        classify.train(lenet_config(out, seed=1, epochs=3))
    now = snapshot(out)
    assert sorted(now) == ["lenet.curves.png", "lenet.metrics.jsonl", "lenet.pt", "lenet.resume.pt"]
    assert now["lenet.pt"] == earlier_run["lenet.pt"]
    assert [r["epoch"] for r in read_metrics(out / "lenet.metrics.jsonl")] == [1]
    assert load_resume(str(out / "lenet.pt"))["train_config"]["seed"] == 1
    monkeypatch.undo()
    path = classify.train(TrainConfig(resume=str(out / "lenet.pt"), progress=False, device="cpu"))
    assert load_checkpoint(path)["train_config"]["seed"] == 1
    assert [r["epoch"] for r in read_metrics(out / "lenet.metrics.jsonl")] == [1, 2, 3]
    assert sorted(snapshot(out)) == ["lenet.curves.png", "lenet.metrics.jsonl", "lenet.pt", "lenet.resume.pt"]


def test_a_resumed_run_keeps_its_own_files_until_it_writes_new_ones(earlier_run, tmp_path, monkeypatch):
    """Resuming is not replacing: interrupted in its first epoch, it can be resumed again."""
    out = directory_of(earlier_run, tmp_path)
    interrupted_at_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        classify.train(TrainConfig(resume=str(out / "lenet.pt"), epochs=3, progress=False, device="cpu"))
    assert snapshot(out) == earlier_run


def test_a_run_resumed_under_another_name_replaces_that_names_files_at_once(earlier_run, tmp_path):
    out = directory_of(earlier_run, tmp_path)
    for suffix in (".pt", ".resume.pt", ".curves.png"):
        (out / f"other{suffix}").write_bytes(b"another run's")
    config = resolve(TrainConfig(resume=str(out / "lenet.pt"), name="other"))
    assert replaced_files(config.output_dir, config.name, config.resume) == [
        out / "other.resume.pt"
    ]  # its checkpoint stays
    same = resolve(TrainConfig(resume=str(out / "lenet.resume.pt")))
    assert replaced_files(same.output_dir, same.name, same.resume) == []


def test_the_metrics_file_of_a_run_replacing_another_starts_at_its_first_record(tmp_path):
    earlier = [tmp_path / "m.resume.pt", tmp_path / "m.pt", tmp_path / "m.jsonl"]
    for path in earlier:
        path.write_text("earlier\n")
    logger = MetricsLogger(tmp_path / "m.jsonl", replacing=earlier)
    assert all(path.read_text() == "earlier\n" for path in earlier)
    logger.log({"epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]
    assert read_metrics(tmp_path / "m.jsonl") == [{"epoch": 1}]


def test_a_run_that_begins_its_metrics_file_before_its_first_record_replaces_the_earlier_run_once(tmp_path):
    """The translator's first resume state may come before its first record (``--eval-every``): it
    begins the file first, and what it writes after that is its own, kept at its first record."""
    earlier = [tmp_path / "m.resume.pt", tmp_path / "m.jsonl"]
    for path in earlier:
        path.write_text("earlier\n")
    logger = MetricsLogger(tmp_path / "m.jsonl", replacing=earlier)
    logger.begin()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]
    assert read_metrics(tmp_path / "m.jsonl") == []
    (tmp_path / "m.resume.pt").write_text("this run's\n")
    logger.begin()
    logger.log({"epoch": 1})
    assert (tmp_path / "m.resume.pt").read_text() == "this run's\n"
    assert read_metrics(tmp_path / "m.jsonl") == [{"epoch": 1}]


def test_a_run_replacing_nothing_starts_its_metrics_file_at_once(tmp_path):
    MetricsLogger(tmp_path / "m.jsonl", replacing=run_files(tmp_path, "m"))
    assert read_metrics(tmp_path / "m.jsonl") == []


def interrupt(*args) -> None:
    raise KeyboardInterrupt


EARLIER_TRANSLATOR = {"tiny.pt": b"the earlier run's", "tiny.metrics.jsonl": b'{"epoch": 1}\n'}
EARLIER_TRANSLATOR["tiny.curves.png"] = b"the earlier run's curves"


def test_a_translator_run_failing_before_its_first_validation_leaves_the_earlier_runs_files(
    tsv, tmp_path, monkeypatch
):
    out = directory_of(EARLIER_TRANSLATOR, tmp_path)
    monkeypatch.setattr(translate_loop.Trainer, "validate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        translate.train(tiny_argv("gru_attention", tsv, out, "--epochs", "1", "--no-progress"))
    assert snapshot(out) == EARLIER_TRANSLATOR


def test_a_translator_run_failing_after_its_first_validation_keeps_the_model_and_has_its_own_metrics(
    tsv, tmp_path, monkeypatch
):
    out = directory_of(EARLIER_TRANSLATOR, tmp_path)
    monkeypatch.setattr(translate_loop, "_save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        translate.train(tiny_argv("gru_attention", tsv, out, "--epochs", "1", "--no-progress"))
    assert sorted(snapshot(out)) == sorted({*EARLIER_TRANSLATOR, "tiny.metrics.jsonl", "tiny.resume.pt"})
    assert (out / "tiny.pt").read_bytes() == EARLIER_TRANSLATOR["tiny.pt"]  # the trained model stays
    assert [r["epoch"] for r in read_metrics(out / "tiny.metrics.jsonl")] == [1]
    assert "val_bleu" in read_metrics(out / "tiny.metrics.jsonl")[0]


class _NoRoom:
    """A file whose writes find its filesystem full."""

    def __init__(self, file) -> None:
        self.file = file

    def __enter__(self) -> _NoRoom:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def full(monkeypatch: pytest.MonkeyPatch, *directories: str) -> None:
    """Writes to new files of ``directories`` fail as on a full filesystem (their files are made)."""
    real, full_dirs = os.fdopen, {os.path.realpath(d) for d in directories}

    def fdopen(fd, *args, **kwargs):
        where = os.path.dirname(os.readlink(f"/proc/self/fd/{fd}"))
        file = real(fd, *args, **kwargs)
        return _NoRoom(file) if where in full_dirs else file

    monkeypatch.setattr(os, "fdopen", fdopen)


def shared_memory_boards() -> set[str]:
    from serving.execution.occupancy import BOARD_PREFIX

    shm = Path("/dev/shm")
    return (
        {p.name for p in shm.iterdir() if p.name.startswith(f"{BOARD_PREFIX}{os.getpid()}-")}
        if shm.is_dir()
        else set()
    )


def test_a_full_shared_memory_puts_the_workers_boards_in_the_temporary_directory_leaving_nothing_there(
    tmp_path, monkeypatch
):
    from serving.execution.occupancy import create_board
    from serving.handoff import create_board as create_connection_board

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    before = shared_memory_boards()
    full(monkeypatch, "/dev/shm")
    boards = [create_board(2), create_connection_board(2)]
    monkeypatch.undo()
    assert [board.parent for board in boards] == [tmp_path, tmp_path]
    assert boards[0].read_bytes() == bytes(2) and set(boards[1].read_bytes()) == {0}
    assert shared_memory_boards() == before


def test_workers_with_no_room_for_their_boards_stop_naming_each_directory_and_its_free_space(
    tmp_path, monkeypatch
):
    import serving.workers as workers

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(workers, "sweep_stale", lambda: [])
    before = shared_memory_boards()
    full(monkeypatch, "/dev/shm", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        workers.run_workers(["--model-repository", str(tmp_path)], 2)
    monkeypatch.undo()
    line = str(stopped.value.code)
    assert line.startswith("--workers 2: cannot make the files the workers share: no room for the workers' ")
    assert "\n" not in line and "/dev/shm: No space left on device (" in line and " KiB free)" in line
    assert f"{tmp_path}: No space left on device (" in line
    assert list(tmp_path.iterdir()) == [] and shared_memory_boards() == before
