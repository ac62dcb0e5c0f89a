"""A --name whose first character is one export writes as '_' ('über', '#1', '日本') is refused before the
run, as it must be (export would refuse its checkpoint), but the refusal said the file name "starts with
'_' or '-'", which it does not: the user could not see what to change. It now names the character."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_hs_unexportable_names import _main, runs  # noqa: F401 - the fixture


@pytest.mark.parametrize("trainer", ["classify", "translate"])
@pytest.mark.parametrize(("name", "first"), [("über", "ü"), ("#1", "#"), ("runs/日本", "日")])
def test_the_refusal_names_the_character_export_would_write_as_underscore(
    trainer: str,
    name: str,
    first: str,
    tmp_path: Path,
    capsys,
    runs: list[str],  # noqa: F811
) -> None:
    code = _main(trainer, tmp_path, name)
    err = capsys.readouterr().err
    assert code == 2 and runs == [] and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"starts with {first!r}, which export writes as '_'" in err, err
    assert "give a file stem such as 'model'" in err


@pytest.mark.parametrize("name", ["_x", "-x"])
def test_a_name_starting_with_underscore_or_dash_says_so(name: str, tmp_path: Path, capsys, runs) -> None:  # noqa: F811
    assert _main("classify", tmp_path, name) == 2
    err = capsys.readouterr().err
    assert f"starts with {name[0]!r};" in err and "which export writes" not in err, err
