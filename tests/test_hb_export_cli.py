"""``python -m export`` given paths that hold no checkpoint: advice that fits what is there."""

from __future__ import annotations

from pathlib import Path

from export.__main__ import main


def _refusal(capsys, paths: list[Path], repository: Path) -> str:
    assert main([*map(str, paths), "--repository", str(repository)]) == 1
    return " ".join(capsys.readouterr().err.split())


def test_a_mistyped_checkpoint_file_is_answered_with_the_checkpoints_beside_it(tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in ("resnet18.pt", "resnet18.resume.pt", "transformer.pt"):
        (checkpoints / name).touch()
    err = _refusal(capsys, [checkpoints / "resnet.pt"], tmp_path / "repo")
    assert "resnet.pt: no such checkpoint file or directory" in err
    assert f"{checkpoints} holds resnet18.pt, transformer.pt" in err  # before: "train some first"
    assert "--output-dir" not in err


def test_a_missing_checkpoint_file_in_a_directory_without_any_says_to_train_into_that_directory(
    tmp_path, capsys
):
    missing = tmp_path / "runs" / "resnet18.pt"
    err = _refusal(capsys, [missing], tmp_path / "repo")
    assert f"python -m training.classify --output-dir {missing.parent}`" in err
    assert f"--output-dir {missing}" not in err  # before: a new directory named resnet18.pt


def test_a_directory_of_an_interrupted_run_is_answered_with_the_resume_that_finishes_it(tmp_path, capsys):
    import torch

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    # what a translator's run killed before its end leaves: <name>.pt comes only as it ends
    torch.save({"task": "translate", "model_name": "transformer", "epoch": 3}, checkpoints / "t.resume.pt")
    assert main([str(checkpoints), "--repository", str(tmp_path / "repo")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "only the resume states of runs that did not finish" in err
    assert f"`python -m training.translate --resume {checkpoints / 't.pt'}`" in err
    assert "train some first" not in err  # before: as if no run had been
