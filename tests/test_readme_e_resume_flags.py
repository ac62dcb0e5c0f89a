"""README ("Training is reproducible"): on ``--resume``, "a data flag, ``--seed`` or optimizer flag given
with another value is refused", and a run with nothing left to train is complete. Both trainers refuse
before they look at whether the run is complete: the classifier took ``--seed 1`` or ``--limit-train`` of
a finished run in silence ("the run is complete", exit 0) where it refused ``--lr``."""

from __future__ import annotations

import pytest

from tests.test_resume_epochs_and_moves import TRAINERS, files, interrupted, lenet, no_data, tsv  # noqa: F401

OTHER_VALUES = {
    "classify": [["--seed", "1"], ["--limit-train", "3"], ["--image-size", "40"]],
    "translate": [["--seed", "1"]],
}


@pytest.mark.parametrize(
    ("trainer", "flag"),
    [(trainer, flag) for trainer, flags in sorted(OTHER_VALUES.items()) for flag in flags],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_a_complete_run_resumed_with_another_data_flag_or_seed_is_refused_naming_it(
    trainer, flag, request, monkeypatch, capsys
):
    module, fixture = TRAINERS[trainer]
    checkpoint = request.getfixturevalue(fixture)
    before = files(checkpoint.parent)
    no_data(monkeypatch)
    capsys.readouterr()
    assert module.main(["--resume", str(checkpoint), *flag, "--no-progress"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --resume") and f"{flag[0]} {flag[1]} (the interrupted run's: " in line
    assert files(checkpoint.parent) == before


def test_a_complete_classifier_run_resumed_with_its_own_values_is_still_complete(lenet, monkeypatch, capsys):  # noqa: F811
    no_data(monkeypatch)
    capsys.readouterr()
    assert lenet.exists()
    argv = ["--resume", str(lenet), "--seed", "0", "--image-size", "16", "--no-progress"]
    assert TRAINERS["classify"][0].main(argv) == 0
    assert capsys.readouterr().out == f"checkpoint: {lenet}\n"
