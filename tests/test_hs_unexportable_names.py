"""A --name export cannot name a model by ("_x", "-x", "runs/_x") trained to the end and only then was
refused by export ("cannot derive a model name from this file name"); it is refused before the run, in
one line, by the rule export names models with (kiln.names.model_name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.results import entry_name
from kiln.names import model_name
from tests.test_ha_hidden_name import runs  # noqa: F401 - the fixture: the names of the runs let through
from training import classify, translate


def _main(trainer: str, out: Path, name: str) -> int:
    if trainer == "classify":
        return classify.main(["--model", "lenet", "--output-dir", str(out), f"--name={name}"])
    return translate.main(["--output-dir", str(out), f"--name={name}", "--no-progress"])


@pytest.mark.parametrize("trainer", ["classify", "translate"])
@pytest.mark.parametrize("name", ["_scratch", "-x", "runs/_x", "__"])
def test_a_name_export_refuses_is_refused_before_the_run(
    trainer: str,
    name: str,
    tmp_path: Path,
    capsys,
    runs: list[str],  # noqa: F811 - test_ha_hidden_name's fixture
) -> None:
    code = _main(trainer, tmp_path, name)
    err = capsys.readouterr().err
    assert code == 2 and runs == [] and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--name {name!r}: export names a model by its checkpoint's file name" in err
    assert "give a file stem such as 'model'" in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["m", "m_1", "m-1", "m.v1", "café", "x y", "9lives"])
def test_export_names_every_checkpoint_training_lets_through(name: str) -> None:
    # one rule on both sides: what training accepts, export names (the same name it always did)
    assert model_name(name) == entry_name(Path(f"{name}.pt"))


@pytest.mark.parametrize("stem", ["", "_x", "-x", ".x"])
def test_export_still_refuses_what_training_refuses(stem: str) -> None:
    assert model_name(stem) is None
    with pytest.raises(ValueError, match="cannot derive a model name from this file name"):
        entry_name(Path(f"{stem}.pt"))
