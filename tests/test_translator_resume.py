"""A translator run writes ``<name>.resume.pt`` after every epoch, and ``--resume`` continues it bit for bit:
a run of two epochs resumed to three ends where a run of three does, and so does a run killed mid-epoch
(its dropout draws, batch order, schedule, best weights, early stopping and records included); a resume
state it cannot continue (another task's or model's, a changed corpus, a flag that cannot change mid-run,
another number of processes) is one error line, exit 2, before any training."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from tests import test_train_translate
from tests.test_train_translate import TINY_ARGS, tiny_argv
from training import classify, translate, translate_loop, translate_setup
from training.checkpoint import load_checkpoint, save_checkpoint
from training.resume import RESUME_KEYS, load_resume
from training.tracking import read_metrics
from training.translate_config import TranslateConfig
from training.translate_flags import BASE

tsv = test_train_translate.tsv  # the tiny TSV corpus fixture, shared
# Clocks, and where the files of each run went: the only things two runs of one training may differ in.
VOLATILE = {"time_s", "train_time_s", "total_time_s", "output_dir", "resume"}


class Interrupted(Exception):
    """The process died (a kill, an out-of-memory, a preempted node)."""


def differences(a, b, path: str = "") -> list[str]:
    """Where two saved states differ (tensors bitwise), leaving out the ``VOLATILE`` keys."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and torch.equal(a, b) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - VOLATILE
        return [d for k in sorted(keys, key=str) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [path]


def killed_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """The run dies at the start of its ``epoch``-th epoch (1-based) of training."""
    real, calls = translate_loop.Trainer.train_epoch, []

    def train_epoch(self, index):
        calls.append(index)
        if len(calls) == epoch:
            raise Interrupted
        return real(self, index)

    monkeypatch.setattr(translate_loop.Trainer, "train_epoch", train_epoch)


def same_run(whole: Path, resumed: Path) -> None:
    """The files of two runs under the name ``tiny`` hold the same training, bit for bit."""
    states = [load_resume(str(out / "tiny.pt"), task="translate") for out in (whole, resumed)]
    assert differences(*states) == []  # weights, optimizer, schedule, scaler, generators, best, stopper...
    assert differences(*(load_checkpoint(out / "tiny.pt") for out in (whole, resumed))) == []
    records = [read_metrics(out / "tiny.metrics.jsonl") for out in (whole, resumed)]
    assert differences(*records) == []


@pytest.mark.parametrize(
    ("name", "every"),
    [(name, []) for name in sorted(TINY_ARGS)] + [("transformer", ["--eval-every", "4", "--patience", "0"])],
    ids=[*sorted(TINY_ARGS), "transformer-eval-every-4-steps"],
)
def test_a_two_epoch_run_resumed_to_three_ends_bitwise_where_a_three_epoch_run_does(
    name, every, tsv, tmp_path
):
    """With --eval-every, the two-epoch run validated its last steps after its resume state: the
    resumed run leaves that record out, as the three-epoch run never made it."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    translate.train(tiny_argv(name, tsv, whole, "--epochs", "3", "--no-progress", *every))
    translate.train(tiny_argv(name, tsv, cut, "--epochs", "2", "--no-progress", *every))
    assert load_resume(str(cut / "tiny.pt"), task="translate")["epoch"] == 2
    translate.train(["--resume", str(cut / "tiny.pt"), "--epochs", "3"])  # all else: the file's
    same_run(whole, cut)
    assert read_metrics(cut / "tiny.metrics.jsonl")[-1]["epoch"] == 3


def test_a_run_killed_before_the_validation_after_its_last_epoch_logs_the_same_loss_when_resumed(
    tsv, tmp_path, monkeypatch
):
    """Validating every 4 steps, the last steps of the run are validated after its last resume state:
    the resumed run, which trains nothing, logs the last epoch's training loss all the same."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    flags = ["--epochs", "2", "--no-progress", "--eval-every", "4"]
    translate.train(tiny_argv("transformer", tsv, whole, *flags))
    real = translate_loop.Trainer.save_resume

    def save_then_die(self, epoch, *args):
        real(self, epoch, *args)
        if epoch == 2:
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(translate_loop.Trainer, "save_resume", save_then_die)
        with pytest.raises(Interrupted):
            translate.train(tiny_argv("transformer", tsv, cut, *flags))
    translate.train(["--resume", str(cut / "tiny.resume.pt")])
    same_run(whole, cut)
    assert read_metrics(cut / "tiny.metrics.jsonl")[-1]["train_loss"] > 0


@pytest.mark.parametrize("every", [[], ["--eval-every", "3"]], ids=["every-epoch", "eval-every-3-steps"])
def test_a_run_killed_in_its_second_epoch_resumes_bitwise_where_the_uninterrupted_one_ends(
    every, tsv, tmp_path, monkeypatch, caplog
):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    flags = ["--epochs", "3", "--no-progress", "--dropout", "0.3", *every]
    translate.train(tiny_argv("transformer", tsv, whole, *flags))
    with monkeypatch.context() as patch:
        killed_in_epoch(patch, 2)
        with pytest.raises(Interrupted):
            translate.train(tiny_argv("transformer", tsv, cut, *flags))
    assert not (cut / "tiny.pt").exists() and load_resume(str(cut / "tiny.resume.pt"), task="translate")
    monkeypatch.setattr(
        translate_setup, "build_tokenizers", lambda *args: pytest.fail("trained the tokenizers")
    )
    with caplog.at_level("INFO", logger="training.translate"):
        translate.train(["--resume", str(cut / "tiny.resume.pt")])
    assert "resuming tiny after epoch 1 of 3" in caplog.text
    same_run(whole, cut)


def test_a_run_that_stopped_early_and_died_before_its_checkpoint_is_not_trained_on_when_resumed(
    tsv, tmp_path, monkeypatch
):
    frozen = ["--lr", "1e-12", "--patience", "1", "--epochs", "5", "--no-progress"]  # BLEU cannot move
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    translate.train(tiny_argv("gru_attention", tsv, whole, *frozen))
    assert len(read_metrics(whole / "tiny.metrics.jsonl")) == 2  # best at 1, no gain at 2: stopped
    with monkeypatch.context() as patch:  # killed after its last resume state, before its checkpoint
        patch.setattr(translate_loop, "_save", lambda *args: (_ for _ in ()).throw(Interrupted()))
        with pytest.raises(Interrupted):
            translate.train(tiny_argv("gru_attention", tsv, cut, *frozen))
    translate.train(["--resume", str(cut / "tiny.pt")])
    same_run(whole, cut)  # it trained epochs 3 to 5 before
    translate.train(["--resume", str(cut / "tiny.pt"), "--patience", "0"])  # patience off: trains on
    assert [r["epoch"] for r in read_metrics(cut / "tiny.metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_a_new_run_whose_first_record_comes_after_its_first_resume_state_keeps_that_state(tsv, tmp_path):
    """Validating every 1000 steps, the run's first record is its last validation, after its resume
    states: the earlier run's files are replaced at its first resume state instead, and its own resume
    state is not removed as the earlier run's at its first record."""
    (tmp_path / "tiny.resume.pt").write_bytes(b"the earlier run's resume state")
    (tmp_path / "tiny.metrics.jsonl").write_text('{"epoch": 1, "earlier": true}\n')
    translate.train(tiny_argv("transformer", tsv, tmp_path, "--epochs", "2", "--eval-every", "1000"))
    assert load_resume(str(tmp_path / "tiny.resume.pt"), task="translate")["epoch"] == 2
    assert [r["epoch"] for r in read_metrics(tmp_path / "tiny.metrics.jsonl")] == [2]


@pytest.fixture(scope="module")
def interrupted(tsv, tmp_path_factory) -> Path:
    """A tiny transformer run of two epochs on the TSV corpus: its checkpoint and resume state."""
    out = tmp_path_factory.mktemp("interrupted")
    return translate.train(tiny_argv("transformer", tsv, out, "--epochs", "2", "--no-progress"))


def classifier_state(out: Path) -> Path:
    """A classifier's resume state (as classify_loop writes it: no "task")."""
    state = dict.fromkeys(RESUME_KEYS, {}) | {"epoch": 1, "model_name": "lenet"}
    return save_checkpoint(state, out / "lenet.resume.pt")


REFUSED_FLAGS = {
    "--model gru_attention (the interrupted run's: 'transformer')": ["--model", "gru_attention"],
    "--lr 0.01 (the interrupted run's: 0.003)": ["--lr", "0.01"],
    "--batch-size 16 (the interrupted run's: 32)": ["--batch-size", "16"],
    "--batch-tokens 500 (the interrupted run's: None)": ["--batch-tokens", "500"],
    "--seed 1 (the interrupted run's: 0)": ["--seed", "1"],
    "--vocab-size 200 (the interrupted run's: 120)": ["--vocab-size", "200"],
    "--separate-vocab (the interrupted run's: shared_vocab=True)": ["--separate-vocab"],
    "--dropout 0.2 (the interrupted run's: 0.1)": ["--dropout", "0.2"],
    "--model-arg d_model=64 (the interrupted run's: 32)": ["--model-arg", "d_model=64"],
    "--corpus numbers (the interrupted run's: 'tsv')": ["--corpus", "numbers"],
}


@pytest.mark.parametrize("message", sorted(REFUSED_FLAGS))
def test_a_flag_that_cannot_change_mid_run_is_refused_naming_both_values_before_any_data_is_read(
    message, interrupted, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(translate_setup, "load_corpus", lambda *args: pytest.fail("read the corpus"))
    argv = ["--resume", str(interrupted), *REFUSED_FLAGS[message], "--output-dir", str(tmp_path)]
    assert translate.main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: --resume {interrupted}: {message}") and "leave these flags unset" in line
    assert list(tmp_path.iterdir()) == []


def test_the_flags_a_resumed_run_may_change_or_repeat_are_taken(interrupted, tmp_path):
    same = ["--lr", "3e-3", "--model", "transformer", "--model-arg", "heads=2", "--batch-size", "32"]
    args = translate.build_parser().parse_args(["--resume", str(interrupted), *same, "--epochs", "5"])
    cfg = translate.resolve_config(args)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.name) == (5, 3e-3, 32, "tiny")
    assert cfg.output_dir == str(interrupted.parent) and cfg.resume == str(interrupted)
    assert cfg.val_limit == 8 and cfg.test_beam == 2  # the interrupted run's, not the defaults


def test_a_resume_state_of_an_older_version_resumes_with_the_defaults_of_the_settings_added_since(
    interrupted, tmp_path
):
    """The run's settings are a ``TranslateConfig``, saved as a dict: a file written before a setting
    existed takes its default, and a setting this version no longer has is left out, not an error."""
    state = load_resume(str(interrupted), task="translate")
    for key in ("dist_timeout", "progress", "preset", "resume"):
        del state["train_config"][key]
    state["train_config"]["a_setting_since_removed"] = 1
    older = save_checkpoint(state, tmp_path / "tiny.resume.pt")
    cfg = translate.resolve_config(translate.build_parser().parse_args(["--resume", str(older)]))
    assert (cfg.dist_timeout, cfg.progress, cfg.preset, cfg.resume) == (None, True, None, str(older))
    assert (cfg.lr, cfg.val_limit, cfg.model_args["d_model"]) == (3e-3, 8, 32)  # the interrupted run's


def test_a_checkpoint_holds_its_settings_as_a_dict_and_an_older_checkpoint_still_gives_its_held_out_split(
    interrupted,
):
    """Export and bench rebuild the test split from the ``train_config`` dict: ``BASE``'s keys, then what
    the run is and where it wrote; one without the settings added since gives the same pairs."""
    ckpt = load_checkpoint(interrupted)
    saved = ckpt["train_config"]
    assert list(saved) == [*BASE, "model", "preset", "output_dir", "name", "resume"]
    assert dataclasses.asdict(TranslateConfig.from_dict(saved)) == saved
    older = {k: v for k, v in saved.items() if k not in ("dist_timeout", "progress", "resume")}
    pairs = translate_setup.held_out_pairs(ckpt, "test")
    assert pairs and translate_setup.held_out_pairs({**ckpt, "train_config": older}, "test") == pairs


def test_a_changed_corpus_is_refused_before_training(interrupted, tsv, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(translate_loop.Trainer, "run", lambda self: pytest.fail("trained"))
    edited = tmp_path / "tiny.tsv"
    edited.write_text(tsv.read_text().replace("\t", "\tx ", 1))  # one target changed
    argv = ["--resume", str(interrupted), "--data-path", str(edited), "--output-dir", str(tmp_path / "o")]
    assert translate.main(argv) == 2  # another path: a flag of another value
    assert "--data-path" in capsys.readouterr().err
    state = load_resume(str(interrupted), task="translate")
    state["train_config"]["data_path"] = str(edited)  # the same path, its contents changed
    resume = save_checkpoint(state, tmp_path / "tiny.resume.pt")
    assert translate.main(["--resume", str(resume), "--output-dir", str(tmp_path / "o")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    expected = f"error: --resume {resume}: the corpus ({edited}) changed since the interrupted run: "
    assert line.startswith(expected) and re.search(r"(train|valid|test): other pairs", line), line
    assert not (tmp_path / "o").exists()


def test_a_resume_state_of_another_task_is_refused_by_each_trainer_naming_the_one_that_continues_it(
    interrupted, tmp_path, capsys
):
    lenet = classifier_state(tmp_path)
    assert translate.main(["--resume", str(lenet), "--output-dir", str(tmp_path / "o")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: --resume {lenet}: {lenet} is a classifier's resume state (lenet), not a translator's: "
        f"python -m training.classify --resume {lenet} continues it"
    )
    assert classify.main(["--resume", str(interrupted), "--output-dir", str(tmp_path / "o")]) == 2
    resume = interrupted.with_name("tiny.resume.pt")
    assert capsys.readouterr().err.splitlines() == [
        f"error: --resume {interrupted}: {resume} is a translator's resume state (transformer), not a "
        f"classifier's: python -m training.translate --resume {interrupted} continues it"
    ]
    assert not (tmp_path / "o").exists()


def test_a_damaged_or_foreign_file_and_another_number_of_processes_are_refused(interrupted, tmp_path, capsys):
    truncated = tmp_path / "cut.resume.pt"
    truncated.write_bytes(interrupted.with_name("tiny.resume.pt").read_bytes()[:400])
    foreign = tmp_path / "foreign.resume.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    state = load_resume(str(interrupted), task="translate")
    wider = save_checkpoint({**state, "world_size": 2}, tmp_path / "wide" / "tiny.resume.pt")
    cases = {
        truncated: "is not a resume state (torch.save writes a zip archive; this is not one, or a truncated",
        foreign: "is not a translator resume state (it lacks ['epoch', 'model_name'",
        wider: "the interrupted run trained on 2 process(es), this one runs on 1: resume it with the same",
    }
    for path, message in cases.items():
        assert translate.main(["--resume", str(path), "--output-dir", str(tmp_path / "o")]) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith("error: --resume") and message in line, line
    assert not (tmp_path / "o").exists()


def test_the_help_says_what_resume_does():
    text = " ".join(translate.build_parser().format_help().split())
    assert "--resume FILE continue an interrupted run from its <name>.pt or <name>.resume.pt" in text
    assert "restarted attempt resumes by itself" in text
