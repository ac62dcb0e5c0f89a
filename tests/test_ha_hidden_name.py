"""A --name whose checkpoint would be a hidden file (a trailing "/", "", ".", ".x") is refused before the
run, in one line: it trained to the end and wrote ``.pt``, ``.resume.pt`` and ``.metrics.jsonl``, which
``ls`` does not show and export refused ("cannot derive a model name from this file name")."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import classify, classify_loop, translate, translate_loop

REFUSED = ["runs/exp1/", "", ".", "..", ".hidden"]


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the runs that got past the flags (none trains)."""
    names: list[str] = []

    def run(config) -> Path:
        names.append(config.name)
        return Path(config.output_dir) / f"{config.name}.pt"

    monkeypatch.setattr(classify_loop, "run", run)
    monkeypatch.setattr(translate_loop, "run", run)
    return names


def _main(trainer: str, out: Path, name: str) -> int:
    if trainer == "classify":
        return classify.main(["--model", "lenet", "--output-dir", str(out), "--name", name])
    return translate.main(["--output-dir", str(out), "--name", name, "--no-progress"])


@pytest.mark.parametrize(
    ("trainer", "name"),
    # an empty --name is the classifier's model name (test_an_empty_name_is_the_classifiers_model_name)
    [(t, n) for t in ("classify", "translate") for n in REFUSED if (t, n) != ("classify", "")],
)
def test_a_name_whose_checkpoint_would_be_hidden_is_refused_before_the_run(
    trainer: str, name: str, tmp_path: Path, capsys, runs: list[str]
) -> None:
    code = _main(trainer, tmp_path, name)
    err = capsys.readouterr().err
    assert code == 2 and runs == [] and err.count("\n") == 1 and "Traceback" not in err, err
    hidden = Path(f"{name}.pt").name
    assert f"--name {name!r}: the checkpoint would be {hidden!r}, a hidden file" in err
    assert "give a file stem such as 'model'" in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("trainer", ["classify", "translate"])
def test_names_with_folders_dots_or_other_scripts_still_run(
    trainer: str, tmp_path: Path, capsys, runs: list[str]
) -> None:
    names = ["runs/exp1/model", "m.v1", "café", "../up"]
    assert [_main(trainer, tmp_path / "out", name) for name in names] == [0] * len(names)
    assert runs == names and "error" not in capsys.readouterr().err


def test_an_empty_name_is_the_classifiers_model_name(tmp_path: Path, capsys, runs: list[str]) -> None:
    assert _main("classify", tmp_path, "") == 0 and runs == ["lenet"], capsys.readouterr().err
