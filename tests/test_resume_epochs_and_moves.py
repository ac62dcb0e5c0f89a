"""``--resume`` of a run given no more ``--epochs`` than it trained, or whose data moved, in both trainers:
fewer epochs are refused in one line naming both numbers before any data is read; as many, with the
run's checkpoint written, is a complete run left untouched (exit 0), and without it (killed after its
last resume state, a torchrun restart too) the checkpoint is written, nothing trained; data found at
a new ``--data-path`` with the interrupted run's content resumes there and is recorded there, other
content is refused naming both places, and data gone from its place says how to give its new one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tests import test_train_translate, test_translator_resume
from tests.test_data_audit import Interrupted
from tests.test_resume_exactness import differences, run
from tests.test_train_translate import tiny_argv
from tests.test_training_hangs_and_changed_data import interrupted_run, write_class
from tests.test_translator_resume_restart import RESTART_1, attempt
from training import classify, classify_loop, translate, translate_loop, translate_setup
from training.checkpoint import load_checkpoint, save_checkpoint
from training.resume import holds_result, load_resume

tsv = test_train_translate.tsv  # the tiny TSV corpus fixture, shared
interrupted = test_translator_resume.interrupted  # a tiny transformer's two epochs: checkpoint written


@pytest.fixture
def lenet(tmp_path) -> Path:
    """A tiny lenet's two epochs on the digits, its checkpoint written."""
    return run(tmp_path / "lenet", epochs=2)


def files(out: Path) -> dict[str, tuple[bytes, int]]:
    """Each file of a run's folder: its bytes and modification time (a rewrite changes the latter)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir())}


def holds_best_weights(checkpoint: Path, resume: Path, task: str = "classify") -> bool:
    """Whether ``checkpoint`` holds the best weights of the run whose resume state is ``resume``."""
    state = load_resume(str(resume), task=task)
    return differences(load_checkpoint(checkpoint)["state_dict"], state["best_state"]) == []


def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the images or the corpus fails the test: the run must stop before."""
    monkeypatch.setattr(classify_loop, "make_splits", lambda spec: pytest.fail("read the images"))
    monkeypatch.setattr(translate_setup, "load_corpus", lambda *args: pytest.fail("read the corpus"))


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classify_loop, "train_epoch", lambda *args: pytest.fail("trained an epoch"))
    monkeypatch.setattr(translate_loop.Trainer, "train_epoch", lambda *args: pytest.fail("trained an epoch"))


TRAINERS = {"classify": (classify, "lenet"), "translate": (translate, "interrupted")}


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_fewer_epochs_than_the_run_trained_are_refused_in_one_line_naming_both_before_reading_data(
    trainer, request, monkeypatch, capsys
):
    module, fixture = TRAINERS[trainer]
    checkpoint = request.getfixturevalue(fixture)
    before = files(checkpoint.parent)
    no_data(monkeypatch)
    capsys.readouterr()
    assert module.main(["--resume", str(checkpoint), "--epochs", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --resume {checkpoint}: --epochs 1 is fewer than the 2 epochs the interrupted run has "
        "trained: a resumed run goes on after its last epoch and cannot undo any; give --epochs 2 (the run "
        "as it is) or more, or start a new run of --epochs 1 (without --resume)"
    ]  # was: "resuming lenet after epoch 2 of 1", and a checkpoint recording epochs=1 over two epochs
    assert files(checkpoint.parent) == before


@pytest.mark.parametrize("epochs", [["--epochs", "2"], []], ids=["epochs-given", "epochs-unset"])
@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_a_run_whose_epochs_are_all_trained_and_whose_checkpoint_is_written_is_left_untouched(
    trainer, epochs, request, monkeypatch, capsys, caplog
):
    module, fixture = TRAINERS[trainer]
    checkpoint = request.getfixturevalue(fixture)
    before = files(checkpoint.parent)
    no_data(monkeypatch)
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        assert module.main(["--resume", str(checkpoint), *epochs, "--no-progress"]) == 0
    assert capsys.readouterr().out == f"checkpoint: {checkpoint}\n"
    [line] = [r.getMessage() for r in caplog.records if "complete" in r.getMessage()]
    assert line == (
        f"{checkpoint.stem}: the run is complete, nothing to train or write: it has trained its 2 epoch(s) "
        f"and {checkpoint} holds its result; a larger --epochs trains on"
    )
    assert files(checkpoint.parent) == before  # was: retrained nothing, but rewrote the checkpoint


def test_a_checkpoint_holds_a_runs_result_where_it_has_its_best_or_its_last_weights_bit_for_bit(
    lenet, tmp_path
):
    """A translator validating every ``--eval-every`` steps validates its last steps after its last
    resume state: where they are its best, its checkpoint holds the state's last weights."""
    ckpt, state = load_checkpoint(lenet), load_resume(str(lenet))

    def moved(by: float) -> dict:
        return {k: v + by if v.is_floating_point() else v for k, v in state["model"].items()}

    state, trained = {**state, "best_state": moved(1.0)}, ("epochs", 2)  # best: an earlier epoch's
    for weights, held in ((moved(1.0), True), (state["model"], True), (moved(2.0), False)):
        path = save_checkpoint({**ckpt, "state_dict": weights}, tmp_path / "lenet.pt")
        assert holds_result(path, state, trained) is held
    shorter = {**ckpt, "state_dict": moved(1.0), "metrics": {**ckpt["metrics"], "epochs": 1}}
    path = save_checkpoint(shorter, tmp_path / "lenet.pt")  # its best weights, after 1 epoch of the 2
    assert not holds_result(path, state, trained)
    (tmp_path / "damaged.pt").write_bytes(lenet.read_bytes()[:300])
    assert not holds_result(tmp_path / "damaged.pt", state, trained)
    assert not holds_result(tmp_path / "none.pt", state, trained)


def no_better_epochs(patch: pytest.MonkeyPatch) -> None:
    """Every validation from now on scores below the run's best: its best weights stay those it had."""
    evaluate = classify_loop.evaluate
    patch.setattr(classify_loop, "evaluate", lambda run, ds: (evaluate(run, ds)[0], -1.0))
    patch.setattr(translate_loop, "score_translations", lambda *args: {"bleu": -1.0, "exact_match": 0.0})


def lengthen_and_interrupt(monkeypatch, writer, main, checkpoint) -> None:
    """Resume ``checkpoint``'s run lengthened to 3 epochs, none better, interrupted where ``writer``
    (module, function) would write its checkpoint: after the last epoch's resume state."""
    with monkeypatch.context() as patch:
        patch.setattr(*writer, lambda *args: (_ for _ in ()).throw(Interrupted()))
        no_better_epochs(patch)
        with pytest.raises(Interrupted):
            main(["--resume", str(checkpoint), "--epochs", "3", "--no-progress"])


def test_a_classifier_checkpoint_written_before_epochs_lengthened_the_run_is_not_taken_for_its_result(
    lenet, monkeypatch, caplog
):
    """Lengthened to 3 epochs, killed after epoch 3's resume state and before its checkpoint, epoch 3 no
    better: the 2-epoch run's checkpoint holds the best weights still, but its 2 epochs, config and
    curves. Resumed, the run writes its own (was: "complete", that checkpoint kept for good)."""
    lengthen_and_interrupt(monkeypatch, (classify_loop, "finish"), classify.main, lenet)
    resume = lenet.with_name("lenet.resume.pt")
    assert load_resume(str(resume))["epoch"] == 3 and holds_best_weights(lenet, resume)  # the case
    no_training(monkeypatch)
    with caplog.at_level(logging.INFO):
        assert classify.main(["--resume", str(lenet), "--no-progress"]) == 0
    assert "nothing left to train (all 3 epochs trained): writing its checkpoint" in caplog.text
    ckpt = load_checkpoint(lenet)
    assert ckpt["metrics"]["epochs"] == ckpt["train_config"]["epochs"] == 3
    assert holds_best_weights(lenet, resume)


def test_a_translator_checkpoint_written_before_epochs_lengthened_the_run_is_not_taken_for_its_result(
    interrupted, tmp_path, monkeypatch
):
    """The translator's: its checkpoint records the steps it trained, the resume state's are more."""
    shutil.copytree(interrupted.parent, tmp_path / "run")
    checkpoint = tmp_path / "run" / interrupted.name
    lengthen_and_interrupt(monkeypatch, (translate_loop, "_save"), translate.main, checkpoint)
    resume = checkpoint.with_name("tiny.resume.pt")
    assert holds_best_weights(checkpoint, resume, "translate")  # the 2-epoch run's best are the best
    no_training(monkeypatch)
    assert translate.main(["--resume", str(checkpoint), "--no-progress"]) == 0
    ckpt, state = load_checkpoint(checkpoint), load_resume(str(resume), task="translate")
    assert (ckpt["metrics"]["steps"], ckpt["train_config"]["epochs"]) == (state["step"], 3)


def test_a_classifier_killed_after_its_last_epoch_writes_its_checkpoint_when_resumed_training_nothing(
    tmp_path, monkeypatch, caplog
):
    with monkeypatch.context() as patch:  # killed after its last resume state, before its checkpoint
        patch.setattr(classify_loop, "finish", lambda *args: (_ for _ in ()).throw(Interrupted()))
        with pytest.raises(Interrupted):
            run(tmp_path, epochs=2)
    resume = tmp_path / "lenet.resume.pt"
    no_training(monkeypatch)
    with caplog.at_level(logging.INFO):
        assert classify.main(["--resume", str(resume), "--no-progress"]) == 0
    assert "nothing left to train (all 2 epochs trained): writing its checkpoint" in caplog.text
    assert holds_best_weights(tmp_path / "lenet.pt", resume)
    assert load_checkpoint(tmp_path / "lenet.pt")["metrics"]["epochs"] == 2
    before = files(tmp_path)
    assert classify.main(["--resume", str(resume), "--no-progress"]) == 0
    assert files(tmp_path) == before


def test_a_classifier_resumed_without_its_metrics_file_records_every_epoch_and_is_then_complete(
    tmp_path, monkeypatch, caplog
):
    """Its resume state alone copied (no ``lenet.metrics.jsonl`` beside it): the checkpoint recorded the
    epochs of the records found (0 of 2), so it never held the run's result and every later ``--resume``
    rewrote it."""
    with monkeypatch.context() as patch:  # killed after its last resume state, before its checkpoint
        patch.setattr(classify_loop, "finish", lambda *args: (_ for _ in ()).throw(Interrupted()))
        with pytest.raises(Interrupted):
            run(tmp_path, epochs=2)
    (tmp_path / "lenet.metrics.jsonl").unlink()
    resume = tmp_path / "lenet.resume.pt"
    no_training(monkeypatch)
    assert classify.main(["--resume", str(resume), "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "lenet.pt")["metrics"]["epochs"] == 2
    before = files(tmp_path)
    with caplog.at_level(logging.INFO):
        assert classify.main(["--resume", str(resume), "--no-progress"]) == 0
    assert "the run is complete" in caplog.text and files(tmp_path) == before


def test_a_torchrun_restart_after_the_last_epoch_writes_a_missing_checkpoint_and_leaves_a_written_one(
    tsv, tmp_path, monkeypatch, caplog
):
    argv = tiny_argv("transformer", tsv, tmp_path, "--epochs", "2", "--no-progress")
    attempt(monkeypatch, "job-c", 0)
    with monkeypatch.context() as patch:  # the attempt dies after its last resume state
        patch.setattr(translate_loop, "_save", lambda *args: (_ for _ in ()).throw(Interrupted()))
        with pytest.raises(Interrupted):
            translate.train(argv)
    attempt(monkeypatch, "job-c", 1)
    no_training(monkeypatch)
    with caplog.at_level(logging.INFO):
        assert translate.train(argv) == tmp_path / "tiny.pt"
    assert f"{RESTART_1}: the run resumes from {tmp_path / 'tiny.resume.pt'}" in caplog.text
    assert "nothing left to train (all 2 epochs trained): writing its checkpoint" in caplog.text
    assert holds_best_weights(tmp_path / "tiny.pt", tmp_path / "tiny.resume.pt", "translate")
    before = files(tmp_path)
    caplog.clear()
    with caplog.at_level(logging.INFO):  # restarted again after the checkpoint, before the exit
        assert translate.train(argv) == tmp_path / "tiny.pt"
    assert files(tmp_path) == before
    assert "tiny: the run is complete, nothing to train or write" in caplog.text


def test_a_classifier_whose_image_folder_moved_resumes_at_the_new_place_given_and_records_it(
    tmp_path, monkeypatch, capsys, caplog
):
    data, resume = interrupted_run(tmp_path)
    new = tmp_path / "elsewhere" / "images"
    new.parent.mkdir()
    data.rename(new)
    capsys.readouterr()
    with monkeypatch.context() as patch:
        no_data(patch)
        assert classify.main(["--resume", str(resume), "--epochs", "2", "--no-progress"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --resume {resume}: the interrupted run's data at {data} is gone: if it moved, give its new "
        "place with --data-path (the resumed run checks its classes and images per class against the "
        "interrupted run's)"
    ]  # was: "data path does not exist", and with --data-path: refused as another value
    argv = ["--resume", str(resume), "--data-path", str(new), "--epochs", "2", "--no-progress"]
    with caplog.at_level(logging.INFO):
        assert classify.main(argv) == 0
    assert (
        f"the data moved from {data} to {new} and its content matches the interrupted run's (its classes "
        "and images per class)" in caplog.text
    )
    state = load_resume(str(resume))
    assert state["epoch"] == 2 and state["data"]["data_path"] == state["train_config"]["data_path"] == str(
        new
    )
    assert load_checkpoint(resume.with_name("lenet.pt"))["data"]["data_path"] == str(new)


def test_a_classifier_given_a_new_place_holding_other_images_is_refused_naming_both_places(tmp_path, capsys):
    data, resume = interrupted_run(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    write_class(other, "a", 3, start=5)
    capsys.readouterr()
    argv = ["--resume", str(resume), "--data-path", str(other), "--epochs", "2", "--no-progress"]
    assert classify.main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"error: --resume {resume}: the data at {other} (--data-path) is not the interrupted run's, which it "
        f"read at {data}: images per class a: 8 (the interrupted run's: 5). "
    )
    assert load_resume(str(resume))["epoch"] == 1


@pytest.fixture
def moved_corpus(interrupted, tmp_path) -> Path:
    """The interrupted translator's resume state, as if its corpus had been read at a place since gone."""
    state = load_resume(str(interrupted), task="translate")
    gone = str(tmp_path / "gone" / "tiny.tsv")
    state["train_config"]["data_path"] = state["data"]["data_path"] = gone
    return save_checkpoint(state, tmp_path / "run" / "tiny.resume.pt")


def test_a_translator_whose_corpus_moved_resumes_at_the_new_place_given_and_records_it(
    moved_corpus, tsv, tmp_path, monkeypatch, capsys, caplog
):
    gone = tmp_path / "gone" / "tiny.tsv"
    with monkeypatch.context() as patch:
        no_data(patch)
        assert translate.main(["--resume", str(moved_corpus), "--epochs", "3"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --resume {moved_corpus}: the interrupted run's data at {gone} is gone: if it moved, give its "
        "new place with --data-path (the resumed run checks the sha256 of each split's pairs against the "
        "interrupted run's)"
    ]  # was: "no such corpus file", and with --data-path: refused as another value
    with caplog.at_level(logging.INFO):
        assert translate.main(["--resume", str(moved_corpus), "--data-path", str(tsv), "--epochs", "3"]) == 0
    assert (
        f"the data moved from {gone} to {tsv} and its content matches the interrupted run's (the sha256 of "
        "each split's pairs)" in caplog.text
    )
    state = load_resume(str(moved_corpus), task="translate")
    assert state["epoch"] == 3 and state["train_config"]["data_path"] == state["data"]["data_path"] == str(
        tsv
    )
    assert load_checkpoint(moved_corpus.with_name("tiny.pt"))["train_config"]["data_path"] == str(tsv)


def test_a_translator_given_a_new_place_holding_other_pairs_is_refused_naming_both_places(
    moved_corpus, tsv, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(translate_loop.Trainer, "run", lambda self: pytest.fail("trained"))
    edited = tmp_path / "edited.tsv"
    edited.write_text(tsv.read_text().replace("\t", "\tx ", 1))  # one target changed
    argv = ["--resume", str(moved_corpus), "--data-path", str(edited)]
    assert translate.main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    gone = tmp_path / "gone" / "tiny.tsv"
    assert line.startswith(
        f"error: --resume {moved_corpus}: the corpus at {edited} (--data-path) is not the interrupted run's, "
        f"which it read at {gone}: "
    )
    assert "other pairs" in line and "give --data-path the place of that corpus" in line
    assert sorted(p.name for p in moved_corpus.parent.iterdir()) == ["tiny.resume.pt"]
