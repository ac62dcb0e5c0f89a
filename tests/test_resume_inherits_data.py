"""``python -m training.classify --resume FILE`` alone continues the interrupted run: its data flags and
``--seed`` come from the file like its other choices (they had to be repeated, else the run was refused),
a data flag given with another value is still refused, and a seed torch cannot take is a usage error in
both trainers before any data is read."""

from __future__ import annotations

import re

import pytest

from tests.test_resume_exactness import cut_after_first_epoch, differences, run, states
from training import classify, classify_loop, translate, translate_loop
from training.checkpoint import load_checkpoint
from training.classify_config import TrainConfig
from training.classify_resolve import resolve

# With TINY's image size and limits: data flags and a seed other than the defaults, so a resumed run
# that fell back to the defaults would differ.
DATA = {"seed": 7, "val_fraction": 0.25}
# Not the run's choices: where it computes and whether it draws a progress bar.
PLACE = ["--device", "cpu", "--no-progress"]


def test_a_run_resumed_with_resume_alone_ends_bitwise_where_the_uninterrupted_one_does(tmp_path, monkeypatch):
    whole = run(tmp_path / "whole", epochs=2, **DATA)
    resume = cut_after_first_epoch(tmp_path / "cut", monkeypatch, epochs=2, **DATA)
    cut = classify.train(["--resume", resume, *PLACE])  # was refused: "--image-size 32 (... 16)", ...
    assert cut == tmp_path / "cut" / "lenet.pt"
    assert differences(*states(tmp_path / "whole", tmp_path / "cut")) == []
    assert differences(*(load_checkpoint(p) for p in (whole, cut))) == []
    assert load_checkpoint(cut)["data"]["seed"] == 7


def test_a_resumed_run_given_its_own_data_flags_again_takes_them(tmp_path, monkeypatch):
    resume = cut_after_first_epoch(tmp_path, monkeypatch, epochs=2, **DATA)
    argv = ["--resume", resume, "--seed", "7", "--image-size", "16", "--val-fraction", "0.25", *PLACE]
    config = resolve(classify.to_config(argv))
    assert (config.seed, config.image_size, config.val_fraction, config.limit_train) == (7, 16, 0.25, 64)
    assert (config.dataset, config.limit_val) == ("digits", 32)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--image-size", "32"], "--image-size 32 (the interrupted run's: 16)"),
        (["--seed", "0"], "--seed 0 (the interrupted run's: 7)"),
        (["--limit-val", "16", "--val-fraction", "0.2"], "--limit-val 16 (the interrupted run's: 32), "),
    ],
)
def test_a_resumed_run_given_another_data_flag_is_refused_before_reading_the_data(
    tmp_path, monkeypatch, flags, named
):
    resume = cut_after_first_epoch(tmp_path, monkeypatch, epochs=2, **DATA)
    monkeypatch.setattr(classify_loop, "make_splits", lambda spec: pytest.fail("read the data"))
    with pytest.raises(ValueError, match=re.escape(named)):
        classify.train(["--resume", resume, *flags, *PLACE])


def test_a_new_run_without_data_flags_trains_on_the_defaults(tmp_path):
    config = resolve(TrainConfig(model="lenet", output_dir=str(tmp_path)))
    defaults = (config.dataset, config.image_size, config.val_fraction, config.seed, config.data_path)
    assert defaults == ("digits", 32, 0.2, 0, None)


@pytest.mark.parametrize("seed", [2**64, 2**70, -(2**63) - 1])
@pytest.mark.parametrize("trainer", [classify, translate], ids=["classify", "translate"])
def test_a_seed_outside_torchs_range_is_an_error_line_naming_the_range(
    tmp_path, monkeypatch, capsys, trainer, seed
):
    for loop in (classify_loop, translate_loop):  # resolving the flags must stop it: no data, no model
        monkeypatch.setattr(loop, "run", lambda *args: pytest.fail("started the run"))
    assert trainer.main(["--output-dir", str(tmp_path), f"--seed={seed}"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == f"error: --seed must be in [-2**63, 2**64) (what torch's generators take), got {seed}"


@pytest.mark.parametrize("seed", [-(2**63), 2**64 - 1])
def test_the_ends_of_torchs_seed_range_are_taken(tmp_path, seed):
    assert resolve(TrainConfig(model="lenet", seed=seed, output_dir=str(tmp_path))).seed == seed
    args = translate.build_parser().parse_args(["--output-dir", str(tmp_path), f"--seed={seed}"])
    assert translate.resolve_config(args).seed == seed
